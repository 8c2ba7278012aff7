"""The replay of hh-rlhf's crowd labels and a round's human step with no person: real bundled
hh-rlhf rows ingested by the project's own ingest (a third of them with their sides swapped
first, as injected label noise), a real SQLite store, the real app served in-process over real
HTTP. The replay answers with the crowd's label whichever side the store calls chosen."""

from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from synpref_core.cli import app as cli
from synpref_core.config import IngestConfig, SourceSpec
from synpref_core.human import store
from synpref_core.human.batches import BatchConfig, create_batch
from synpref_core.human.replay import ACCOUNTS
from synpref_core.human.rounds import (
    VerificationConfig,
    collect_gold,
    ensure_replay_accounts,
    replay_round,
)
from synpref_core.human.serve import serve_app
from synpref_core.ingest.formats import hh_rlhf
from synpref_core.ingest.pipeline import run_ingest
from synpref_core.stages import load_manifest
from tests.conftest import DATA

HH = DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
N = 24  # pairs in the pool; every third stored with its sides swapped


@pytest.fixture(scope="module")
def noisy_pool(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """A pair stage of the first N usable hh-rlhf rows, every third with chosen and rejected
    swapped; and the crowd's chosen final reply keyed by its rejected one."""
    root = tmp_path_factory.mktemp("hh")
    rows, crowd = [], {}
    with gzip.open(HH, "rt") as f:
        for line in f:
            raw = json.loads(line)
            (draft,) = hh_rlhf(raw, SourceSpec(format="hh-rlhf", paths=[str(HH)]))
            if not (draft["chosen"].strip() and draft["rejected"].strip()):
                continue
            if len(rows) % 3 == 2:
                raw = {"chosen": raw["rejected"], "rejected": raw["chosen"]}
            crowd[draft["rejected"]] = draft["chosen"]
            rows.append(raw)
            if len(rows) == N:
                break
    source = root / "noisy.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = IngestConfig(
        sources=[SourceSpec(format="hh-rlhf", paths=[str(source)])], out=str(root / "pool")
    )
    return run_ingest(config, progress=False).rsplit("/", 1)[0], crowd


def _preferences(db: str) -> dict[str, tuple[str, str]]:
    """pair_id → (stored chosen text, the replayed verdict in stored order)."""
    engine = store.open_engine(db)
    with store.reading(engine) as session:
        rows = session.execute(
            select(store.Item, store.Verdict.preferred).join(
                store.Verdict, store.Verdict.item_id == store.Item.id
            )
        ).all()
        out = {item.pair_id: (item.pair["chosen"], preferred) for item, preferred in rows}
    engine.dispose()
    return out


def test_hh_replay_gives_the_crowd_label_on_stored_and_swapped_pairs(noisy_pool, tmp_path):
    pool, crowd = noisy_pool
    db, creds = f"sqlite:///{tmp_path / 'human.db'}", tmp_path / "replay.json"
    engine = store.open_engine(db)
    creds.write_text(json.dumps(ensure_replay_accounts(engine, {"hh-rlhf-crowd": "hh-rlhf"})))
    batch = BatchConfig(pairs=pool, name="hh", size=N, overlap=1, annotators=["hh-rlhf-crowd"])
    assert create_batch(engine, batch).items == N
    engine.dispose()

    with serve_app(db) as url:
        args = ["replay-humans", "--url", url, "--dataset", "hh-rlhf", "--credentials", str(creds)]
        result = CliRunner().invoke(cli, args)  # --data: the bundled file
    assert result.exit_code == 0, result.output
    assert f"hh-rlhf-crowd: replayed {N} recorded human labels" in result.output

    verdicts = _preferences(db)
    assert len(verdicts) == N
    noisy = {pid for pid, (chosen, _) in verdicts.items() if chosen not in crowd.values()}
    assert len(noisy) == N // 3, "every third pair is stored with the crowd's sides swapped"
    for pair_id, (chosen, preferred) in verdicts.items():
        assert preferred == ("rejected" if pair_id in noisy else "chosen"), chosen[:80]


def test_replay_round_opens_the_batch_replays_and_gold_has_the_crowd_orientation(
    noisy_pool, tmp_path
):
    pool, crowd = noisy_pool
    config = VerificationConfig(
        db_url=f"sqlite:///{tmp_path / 'human.db'}",
        pairs=pool,
        round=1,
        size=N,
        wait="replay",
        gold_root=str(tmp_path / "gold"),
    )  # overlap 2 by default: capped at hh-rlhf's one account
    datasets = {"hh-rlhf": config.replay_data["hh-rlhf"]}
    counts = replay_round(config, datasets)
    assert counts == {"items": N, "submitted": N, "already": 0, "unmatched": 0, "refused": 0}

    engine = store.open_engine(config.db_url)
    with store.reading(engine) as session:
        batch = session.scalar(select(store.Batch).where(store.Batch.name == "round-1"))
        note = session.scalar(select(store.User.note).where(store.User.name == "hh-rlhf-crowd"))
    engine.dispose()
    assert (batch.overlap, batch.round) == (1, 1)
    assert note.startswith("replay of real human labels")

    gold = load_manifest(collect_gold(config.model_copy(update={"round": 2})))
    assert (gold.counts["gold"], gold.counts["swapped"], gold.counts["pending"]) == (N, N // 3, 0)
    rows = pq.read_table(gold.paths()[0]).to_pylist()
    assert all(row["chosen"] == crowd[row["rejected"]] for row in rows), "the crowd's orientation"
    assert sum(row["parent_id"] is not None for row in rows) == N // 3

    again = replay_round(config, datasets)
    assert again == {"items": N, "submitted": 0, "already": N, "unmatched": 0, "refused": 0}
    assert set(ACCOUNTS["hh-rlhf"]) == {"hh-rlhf-crowd"}
