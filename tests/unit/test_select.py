"""Selection of a pair stage by status, source and a deterministic hash split."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import ValidationError

from synpref_core.config import ExecutorConfig, IngestConfig, SourceSpec
from synpref_core.curation.select import SelectConfig, SelectStage, split_position
from synpref_core.executors import run
from synpref_core.ingest.pipeline import run_ingest
from synpref_core.schema import PAIR_SCHEMA
from synpref_core.stages import iter_batches, load_manifest
from tests.conftest import DATA

LOCAL = ExecutorConfig(kind="local")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    out = tmp_path_factory.mktemp("ingested")
    config = IngestConfig(
        sources=[
            SourceSpec(format="offsetbias", paths=[str(DATA / "offsetbias")]),
            SourceSpec(
                format="llmbar",
                status="gold",
                paths=[str(DATA / "llmbar" / "Dataset" / "LLMBar" / "Natural")],
            ),
        ],
        out=str(out),
    )
    return run_ingest(config, LOCAL, progress=False)


def _select(ingested, out, **where) -> tuple[pa.Table, dict]:
    manifest = run(SelectStage(SelectConfig(input=ingested, out=str(out), **where)), LOCAL)
    batches = list(iter_batches(manifest))
    return pa.Table.from_batches(batches, schema=PAIR_SCHEMA), load_manifest(manifest)


def _ids(table: pa.Table) -> set[str]:
    return set(table["pair_id"].to_pylist())


def test_complementary_splits_partition_the_pairs(ingested, tmp_path):
    every, _ = _select(ingested, tmp_path / "all")
    train, train_manifest = _select(ingested, tmp_path / "train", split=(0.0, 0.8))
    held, _ = _select(ingested, tmp_path / "held", split=(0.8, 1.0))
    assert _ids(train).isdisjoint(_ids(held))
    assert _ids(train) | _ids(held) == _ids(every)
    assert 0.7 < train.num_rows / every.num_rows < 0.9
    counts = train_manifest.counts
    assert counts["rows"] + counts["not_selected"] == counts["input_rows"] == every.num_rows
    # every row keeps its content: the selection is a filter, not a rewrite
    assert train.schema.equals(every.schema)


def test_split_depends_on_id_and_seed_only(ingested):
    ids = pa.Table.from_batches(list(iter_batches(ingested, columns=["pair_id"])))["pair_id"]
    ids = ids.combine_chunks()
    whole = split_position(ids, seed=0)
    reversed_ids = pc.take(ids, pa.array(range(len(ids) - 1, -1, -1)))
    assert (split_position(reversed_ids, seed=0)[::-1] == whole).all()
    assert (split_position(ids.slice(5, 10), seed=0) == whole[5:15]).all()
    assert (split_position(ids, seed=1) != whole).mean() > 0.99
    assert ((whole >= 0) & (whole < 1)).all()


def test_status_and_source_filters(ingested, tmp_path):
    gold, _ = _select(ingested, tmp_path / "gold", statuses=["gold"])
    assert set(gold["status"].to_pylist()) == {"gold"}
    assert set(gold["source"].to_pylist()) == {"llmbar"}
    offsetbias, _ = _select(ingested, tmp_path / "ob", sources=["offsetbias"])
    assert set(offsetbias["status"].to_pylist()) == {"unverified"}
    none, manifest = _select(ingested, tmp_path / "none", sources=["nope"])
    assert none.num_rows == 0 and manifest.counts["not_selected"] > 0


def test_rerun_skips_and_another_input_is_not_served_from_old_shards(ingested, tmp_path):
    config = SelectConfig(input=ingested, out=str(tmp_path / "s"), split=(0.0, 0.5))
    first = load_manifest(run(SelectStage(config), LOCAL))
    again = load_manifest(run(SelectStage(config), LOCAL))
    assert first.files == again.files and first.config_hash == again.config_hash
    other = SelectStage(config.model_copy(update={"split": (0.5, 1.0)}))
    assert other.config_hash != first.config_hash


@pytest.mark.parametrize("split", [(0.5, 0.5), (-0.1, 0.5), (0.2, 1.1), (0.8, 0.2)])
def test_bad_split_is_rejected(split):
    with pytest.raises(ValidationError, match="split"):
        SelectConfig(input="x", out="y", split=split)
