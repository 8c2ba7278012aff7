"""Skywork-Reward v1's selection steps: the per-category top fraction by mean reward (ranked
across shards) and keep-if-RM-agrees, over hand-made pairs and scores and over a real score
stage with a tiny RM."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from synpref_core.curation.v1select import (
    RmAgreesConfig,
    RmAgreesStage,
    TopFractionConfig,
    TopFractionStage,
)
from synpref_core.executors import run
from synpref_core.io import fs as fsio
from synpref_core.rm.scoring import SCORE_SCHEMA, ScoreConfig, ScoreStage
from synpref_core.schema import PAIR_SCHEMA, TASK_CATEGORIES
from synpref_core.stages import ShardResult, StageError, load_manifest, part_name, read_stage
from tests.stage_helpers import TableStage


class PartsStage(TableStage):
    """A hand-made stage of several shards: one data file per table of ``parts``."""

    def __init__(self, parts: list[pa.Table], out: str, schema: pa.Schema):
        super().__init__(pa.concat_tables(parts), out, schema)
        self.parts = parts

    def plan(self) -> list[dict[str, Any]]:
        return [{"rows": part.num_rows} for part in self.parts]

    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        fs, root = fsio.resolve(self.out)
        rel = f"data/{part_name(index)}.parquet"
        with fsio.AtomicParquetWriter(fs, fsio.join(root, rel), self.schema) as out:
            out.write(self.parts[index])
        entry = {"path": rel, "kind": "data", "rows": out.rows, "bytes": out.size()}
        return {"shard": index, "files": [entry], "counts": {"rows": out.rows}}


def write_parts(parts: list[pa.Table], out: Path, schema: pa.Schema = PAIR_SCHEMA) -> str:
    run(PartsStage(parts, str(out), schema), progress=False)
    return str(out)


def pairs_table(rows: list[dict]) -> pa.Table:
    """Pairs from dicts of pair_id, category (None: no attribute) and source."""

    def pair(i: int, row: dict) -> dict:
        category = row.get("category")
        return {
            "pair_id": row["pair_id"],
            "conversation": [{"role": "user", "content": f"question {row['pair_id']}"}],
            "chosen": f"a good answer {i}",
            "rejected": f"a bad answer {i}",
            "task_category": None if category is None else {"value": category, "source": "llm"},
            "status": "unverified",
            "decided_by": "source",
            "run_id": "hand",
            "source": row.get("source", "magpie"),
            "source_file": "hand.jsonl",
            "source_row": i,
        }

    return pa.Table.from_pylist([pair(i, row) for i, row in enumerate(rows)], schema=PAIR_SCHEMA)


def scores_table(rows: list[dict]) -> pa.Table:
    """Scores whose mean reward is ``score`` and whose p is ``p`` (default 0.5)."""
    table = [
        {
            "pair_id": row["pair_id"],
            "r_chosen": row.get("score", 0.0),
            "r_rejected": row.get("score", 0.0),
            "p": row.get("p", 0.5),
            "chosen_tokens": 1,
            "rejected_tokens": 1,
        }
        for row in rows
    ]
    return pa.Table.from_pylist(table, schema=SCORE_SCHEMA)


def write_pair(rows: list[list[dict]], root: Path) -> tuple[str, str]:
    """A pairs stage and its score stage, one shard per list of rows."""
    pairs = write_parts([pairs_table(r) for r in rows], root / "pairs")
    scores = write_parts([scores_table(r) for r in rows], root / "scores", SCORE_SCHEMA)
    return pairs, scores


def top(pairs: str, scores: str, out: Path, **options: Any) -> tuple[set[str], Any]:
    config = TopFractionConfig(pairs=pairs, scores=scores, out=str(out), **options)
    manifest = load_manifest(run(TopFractionStage(config), progress=False))
    return kept_ids(manifest), manifest


def kept_ids(manifest: Any) -> set[str]:
    if manifest.rows == 0:
        return set()
    return set(read_stage(manifest.dir, columns=["pair_id"])["pair_id"].to_pylist())


def reference_top(rows: list[dict], fraction: dict[str, float]) -> set[str]:
    """The top fraction per category, row by row in plain Python (the test's oracle)."""
    kept = set()
    for category in {r["bucket"] for r in rows}:
        ranked = sorted((r for r in rows if r["bucket"] == category), key=lambda r: r["pair_id"])
        ranked.sort(key=lambda r: -r["score"])  # stable: ties stay in pair_id order
        k = int(fraction.get(category, 0.1) * len(ranked) + 0.5)
        kept |= {r["pair_id"] for r in ranked[:k]}
    return kept


def assert_accounted(manifest: Any) -> None:
    for shard in manifest.shards:
        counts = shard["counts"]
        assert counts["rows"] + counts["not_selected"] == counts["input_rows"]
    assert manifest.counts["input_rows"] == sum(s["spec"]["rows"] for s in manifest.shards)


def test_top_fraction_per_category_is_global_with_ties_by_pair_id(tmp_path):
    rng = random.Random(7)
    categories = ["math", "coding & debugging", "reasoning", None, "Not a category"]
    rows = [
        {"pair_id": f"{rng.getrandbits(64):016x}", "category": rng.choice(categories)}
        | {"score": float(rng.randint(0, 4))}  # few distinct scores: many ties
        for _ in range(120)
    ]
    for row in rows:
        row["bucket"] = row["category"] if row["category"] in TASK_CATEGORIES else "other"
    pairs, scores = write_pair([rows[:50], rows[50:90], rows[90:]], tmp_path)

    kept, manifest = top(pairs, scores, tmp_path / "top")

    assert kept == reference_top(rows, {"math": 0.3, "coding & debugging": 0.3})
    assert_accounted(manifest)
    for bucket in {"math", "coding & debugging", "reasoning", "other"}:
        n = sum(r["bucket"] == bucket for r in rows)
        want = int((0.3 if bucket in ("math", "coding & debugging") else 0.1) * n + 0.5)
        assert manifest.counts[f"{bucket}:kept"] == want
        assert manifest.counts[f"{bucket}:not_selected"] == n - want
    thresholds = manifest.shards[0]["spec"]["thresholds"]
    assert all(s["spec"]["thresholds"] == thresholds for s in manifest.shards)


def test_thresholds_span_shards_and_the_unknown_bucket_is_configurable(tmp_path):
    # the best math pairs all sit in shard 0: a per-shard top 30% would keep some of shard 1
    shard0 = [{"pair_id": f"a{i}", "category": "math", "score": 10.0 + i} for i in range(5)]
    shard1 = [{"pair_id": f"b{i}", "category": "math", "score": float(i)} for i in range(5)]
    shard1 += [{"pair_id": f"c{i}", "category": None, "score": float(i)} for i in range(4)]
    pairs, scores = write_pair([shard0, shard1], tmp_path)

    options = {"unknown": "unlabelled", "fractions": {"math": 0.3, "unlabelled": 0.5}}
    kept, manifest = top(pairs, scores, tmp_path / "top", **options)

    assert kept == {"a4", "a3", "a2", "c3", "c2"}
    assert [s["counts"]["rows"] for s in manifest.shards] == [3, 2]
    assert manifest.counts["unlabelled:kept"] == 2
    assert_accounted(manifest)


def test_source_offsets_change_the_ranking_and_other_sources_pass(tmp_path):
    rows = [
        {"pair_id": f"u{i}", "category": "math", "source": "ultra", "score": 5.0 + i}
        for i in range(5)
    ] + [
        {"pair_id": f"p{i}", "category": "math", "source": "pro", "score": float(i)}
        for i in range(5)
    ]
    rows += [{"pair_id": "h0", "category": "math", "source": "helpsteer2", "score": -9.0}]
    pairs, scores = write_pair([rows[:6], rows[6:]], tmp_path)
    sources = ["ultra", "pro"]

    plain, _ = top(pairs, scores, tmp_path / "plain", sources=sources)
    shifted, manifest = top(
        pairs, scores, tmp_path / "shifted", sources=sources, offsets={"pro": 10.0}
    )

    assert plain == {"u4", "u3", "u2", "h0"}
    assert shifted == {"p4", "p3", "p2", "h0"}
    assert manifest.counts["passed_through"] == 1
    assert manifest.counts["math:kept"] + manifest.counts["math:not_selected"] == 10
    assert_accounted(manifest)


def test_rerun_skips_finished_shards_and_recomputes_a_removed_one(tmp_path):
    rows = [{"pair_id": f"x{i:02d}", "category": "math", "score": float(i)} for i in range(20)]
    pairs, scores = write_pair([rows[:10], rows[10:]], tmp_path)
    _, first = top(pairs, scores, tmp_path / "top")
    markers = sorted((tmp_path / "top" / "_markers").iterdir())
    stamps = [os.stat(m).st_mtime_ns for m in markers]

    _, again = top(pairs, scores, tmp_path / "top")
    assert again == first
    assert [os.stat(m).st_mtime_ns for m in markers] == stamps

    (tmp_path / "top" / "data" / "part-00001.parquet").unlink()
    _, third = top(pairs, scores, tmp_path / "top")
    assert third == first
    assert os.stat(markers[0]).st_mtime_ns == stamps[0]
    assert os.stat(markers[1]).st_mtime_ns != stamps[1]


def test_scores_of_other_pairs_fail_with_one_line(tmp_path):
    rows = [{"pair_id": f"y{i}", "category": "math", "score": float(i)} for i in range(6)]
    pairs = write_parts([pairs_table(rows[:3]), pairs_table(rows[3:])], tmp_path / "pairs")
    one_file = write_parts([scores_table(rows)], tmp_path / "one", SCORE_SCHEMA)
    swapped = [*rows[:3], rows[4], rows[3], rows[5]]
    halves = [scores_table(swapped[:3]), scores_table(swapped[3:])]
    misplaced = write_parts(halves, tmp_path / "swapped", SCORE_SCHEMA)

    with pytest.raises(StageError, match="1 files against 2") as layout:
        TopFractionStage(TopFractionConfig(pairs=pairs, scores=one_file, out=str(tmp_path / "a")))
    for stage in (
        TopFractionStage(TopFractionConfig(pairs=pairs, scores=misplaced, out=str(tmp_path / "b"))),
        RmAgreesStage(RmAgreesConfig(pairs=pairs, scores=misplaced, out=str(tmp_path / "c"))),
    ):
        with pytest.raises(StageError, match="at row 0 it holds pair y4, not y3") as ids:
            run(stage, progress=False)
        assert "\n" not in str(ids.value)
    assert "\n" not in str(layout.value)


def test_rm_agrees_with_margin_and_source_filter(tmp_path):
    ps = [0.2, 0.5, 0.55, 0.7, 0.9]
    rows = [{"pair_id": f"w{i}", "source": "wildguard", "p": p} for i, p in enumerate(ps)]
    rows += [{"pair_id": f"h{i}", "source": "helpsteer2", "p": p} for i, p in enumerate(ps)]
    pairs, scores = write_pair([rows[:4], rows[4:]], tmp_path)

    def agrees(out: str, **options: Any) -> tuple[set[str], Any]:
        config = RmAgreesConfig(pairs=pairs, scores=scores, out=str(tmp_path / out), **options)
        manifest = load_manifest(run(RmAgreesStage(config), progress=False))
        assert_accounted(manifest)
        return kept_ids(manifest), manifest

    assert agrees("all")[0] == {"w2", "w3", "w4", "h2", "h3", "h4"}
    assert agrees("margin", margin=0.1)[0] == {"w3", "w4", "h3", "h4"}
    kept, manifest = agrees("wild", sources=["wildguard"], margin=0.1)
    assert kept == {"w3", "w4"} | {f"h{i}" for i in range(5)}
    assert manifest.counts["passed_through"] == 5 and manifest.counts["not_selected"] == 3


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"default_fraction": 0.0}, "default_fraction"),
        ({"fractions": {"math": 1.5}}, "fractions"),
        ({"fractions": {"Math": 0.3}}, "fractions"),
        ({"fractions": {"unlabelled": 0.3}}, "fractions"),
        ({"offsets": {"pro": float("inf")}}, "offsets"),
        ({"unknown": ""}, "unknown"),
    ],
)
def test_bad_top_fraction_configs_name_the_field(options, field):
    with pytest.raises(ValidationError, match=field):
        TopFractionConfig(pairs="p", scores="s", out="o", **options)


def test_config_defaults_and_bad_margin():
    config = TopFractionConfig(pairs="p", scores="s", out="o", unknown="x", fractions={"x": 1})
    assert config.fraction("x") == 1 and config.fraction("math") == 0.1
    default = TopFractionConfig(pairs="p", scores="s", out="o")
    assert default.fraction("math") == default.fraction("coding & debugging") == 0.3
    assert default.fraction("other") == 0.1
    with pytest.raises(ValidationError, match="margin"):
        RmAgreesConfig(pairs="p", scores="s", out="o", margin=0.5)


def test_real_score_stage_then_both_selections(tmp_path, tiny):
    categories = ["math", "coding & debugging", "editing", None]
    rows = [{"pair_id": f"z{i:02d}", "category": categories[i % 4]} for i in range(24)]
    pairs = write_parts([pairs_table(rows[:13]), pairs_table(rows[13:])], tmp_path / "pairs")
    score_config = ScoreConfig(pairs=pairs, model=tiny, out=str(tmp_path / "scores"), max_length=64)
    scores = run(ScoreStage(score_config), progress=False)
    scored = read_stage(scores).to_pylist()
    for row, score in zip(rows, scored, strict=True):
        row["score"] = (score["r_chosen"] + score["r_rejected"]) / 2
        row["bucket"] = row["category"] or "other"

    kept, manifest = top(pairs, scores, tmp_path / "top")
    assert kept == reference_top(rows, {"math": 0.3, "coding & debugging": 0.3})
    assert manifest.counts["math:kept"] == 2 and manifest.counts["editing:kept"] == 1
    assert_accounted(manifest)

    config = RmAgreesConfig(pairs=pairs, scores=scores, out=str(tmp_path / "agrees"))
    agreed = load_manifest(run(RmAgreesStage(config), progress=False))
    assert kept_ids(agreed) == {s["pair_id"] for s in scored if s["p"] > 0.5}
    assert_accounted(agreed)
