"""Stage 1's sets (SetStage) over small hand-made pair and judged stages: precedence and
parent-id dedup, exclusion of what humans decided, judge-outcome narrowing with restamping and
evidence, status filters, the empty set, the counts that account for every input row, and the
identity that decides when a set is rebuilt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synpref_core.annotate.stages import JUDGED_SCHEMA
from synpref_core.config import ExecutorConfig
from synpref_core.curation.sets import SetConfig, SetInput, SetStage
from synpref_core.executors import run
from synpref_core.io import fs as fsio
from synpref_core.schema import PAIR_SCHEMA, empty_attributes, pair_id
from synpref_core.stages import Manifest, ShardResult, load_manifest, part_name
from tests.stage_helpers import TableStage, write_stage

LOCAL = ExecutorConfig(kind="local")
COUNTS = ("rows", "not_selected", "excluded", "duplicates")


def pair(n: int, *, swapped: bool = False, status: str = "unverified", tag: str = "x") -> dict:
    """Pair ``n`` (a real row with its real id); ``swapped``: the humans' swap of pair ``n``,
    sides exchanged, a new id and the original's id as ``parent_id``. ``tag`` marks which
    stage a copy came from (``source_file``)."""
    conversation = [{"role": "user", "content": f"question {n}"}]
    chosen, rejected = f"good {n}", f"bad {n}"
    parent = None
    if swapped:
        parent = pair_id(conversation, chosen, rejected)
        chosen, rejected = rejected, chosen
    return {
        "pair_id": pair_id(conversation, chosen, rejected), "conversation": conversation,
        "chosen": chosen, "rejected": rejected, **empty_attributes(),
        "status": status, "decided_by": "source", "round": None,
        "evidence": {"human_votes": [1, 0], "judge_votes": None, "p_best": 0.7, "p_gold": None,
                     "note": None},
        "run_id": "hand", "source": "wild", "source_file": tag, "source_row": n,
        "source_subset": None, "parent_id": parent, "group_id": None, "meta": None,
    }  # fmt: skip


def pid(n: int, swapped: bool = False) -> str:
    return pair(n, swapped=swapped)["pair_id"]


class PartsStage(TableStage):
    """A hand-made pair stage of several files, one per list of rows."""

    def __init__(self, parts: list[list[dict]], out: str):
        self.parts = [pa.Table.from_pylist(rows, schema=PAIR_SCHEMA) for rows in parts]
        super().__init__(pa.concat_tables(self.parts), out)

    def plan(self) -> list[dict[str, Any]]:
        return [{"rows": part.num_rows} for part in self.parts]

    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        fs, root = fsio.resolve(self.out)
        rel = f"data/{part_name(index)}.parquet"
        with fsio.AtomicParquetWriter(fs, fsio.join(root, rel), PAIR_SCHEMA) as out:
            out.write(self.parts[index])
        entry = {"path": rel, "kind": "data", "rows": out.rows, "bytes": out.size()}
        return {"shard": index, "files": [entry], "counts": {"rows": out.rows}}


def stage(root: Path, name: str, *parts: list[dict]) -> str:
    """A pair stage at ``root/name`` with one file per list of rows."""
    out = str(root / name)
    run(PartsStage(list(parts), out), LOCAL, progress=False)
    return out


def judged(root: Path, outcomes: dict[str, tuple[str, list[str]]], name: str = "judged") -> str:
    """A judged stage: pair id → (outcome, the sides each vote preferred)."""

    def vote(model: str, side: str) -> dict:
        return {"model": model, "sample": 0, "permutation": ["chosen", "rejected"],
                "template_version": "judge-v1", "raw": "", "verdict": 1, "side": side,
                "error": None}  # fmt: skip

    rows = [
        {"pair_id": p, "outcome": outcome, "rule": "majority",
         "model_votes": [(f"j{i}", s) for i, s in enumerate(sides)],
         "votes": [vote(f"j{i}", s) for i, s in enumerate(sides)],
         "few_shot_ids": [], "zero_shot": True, "template_version": "judge-v1", "reason": None}
        for p, (outcome, sides) in outcomes.items()
    ]  # fmt: skip
    return write_stage(
        pa.Table.from_pylist(rows, schema=JUDGED_SCHEMA), str(root / name), JUDGED_SCHEMA
    )


def build(root: Path, inputs: list[SetInput], exclude: list[str] = (), name: str = "set"):
    config = SetConfig(inputs=inputs, exclude=list(exclude), out=str(root / name))
    return load_manifest(run(SetStage(config), LOCAL, progress=False))


def rows_of(manifest: Manifest) -> list[dict]:
    return [row for path in manifest.paths() for row in pq.read_table(path).to_pylist()]


def ids_of(manifest: Manifest) -> list[str]:
    return [row["pair_id"] for row in rows_of(manifest)]


def assert_reconciled(manifest: Manifest) -> None:
    """Every input row is accounted for, per shard and over the manifest, and ``rows`` is what
    the files hold."""
    for shard in manifest.shards:
        counts = shard["counts"]
        assert counts["input_rows"] == sum(counts[k] for k in COUNTS), counts
        assert counts["rows"] == sum(f["rows"] for f in shard["files"])
        assert counts["input_rows"] == shard["spec"]["rows"]
    total = manifest.counts
    assert total["input_rows"] == sum(total[k] for k in COUNTS)
    assert total["rows"] == manifest.rows == len(rows_of(manifest))
    for key in ("input_rows", *COUNTS):
        assert total[key] == sum(s["counts"][key] for s in manifest.shards)


# -- precedence and dedup -----------------------------------------------------------------------


def test_a_pair_in_two_inputs_appears_once_from_the_first(tmp_path):
    first = stage(tmp_path, "first", [pair(1, tag="first"), pair(2, tag="first")])
    second = stage(
        tmp_path, "second", [pair(2, tag="second"), pair(3, tag="second")], [pair(1, tag="second")]
    )
    manifest = build(tmp_path, [SetInput(stage=first), SetInput(stage=second)])
    rows = rows_of(manifest)
    assert [r["pair_id"] for r in rows] == [pid(1), pid(2), pid(3)]
    assert [r["source_file"] for r in rows] == ["first", "first", "second"]
    assert manifest.num_shards == 3  # one per input file
    assert [s["counts"]["duplicates"] for s in manifest.shards] == [0, 1, 1]
    assert manifest.counts == {
        "input_rows": 5, "rows": 3, "not_selected": 0, "excluded": 0, "duplicates": 2,
    }  # fmt: skip
    assert_reconciled(manifest)


def test_files_of_one_input_take_precedence_in_order(tmp_path):
    only = stage(tmp_path, "only", [pair(1, tag="a")], [pair(1, tag="b"), pair(2, tag="b")])
    manifest = build(tmp_path, [SetInput(stage=only)])
    assert [(r["pair_id"], r["source_file"]) for r in rows_of(manifest)] == [
        (pid(1), "a"),
        (pid(2), "b"),
    ]
    assert_reconciled(manifest)


def test_a_pair_twice_in_one_file_appears_once(tmp_path):
    # the same pair twice, and a pair followed by its swap, in a single input file
    only = stage(
        tmp_path, "only", [pair(1, tag="a"), pair(1, tag="b"), pair(2), pair(2, swapped=True)]
    )
    manifest = build(tmp_path, [SetInput(stage=only)])
    assert [(r["pair_id"], r["source_file"]) for r in rows_of(manifest)] == [
        (pid(1), "a"),
        (pid(2), "x"),
    ]
    assert manifest.counts["duplicates"] == 2
    assert_reconciled(manifest)


def test_a_swapped_pair_listed_first_makes_the_original_a_duplicate(tmp_path):
    human = stage(tmp_path, "human", [pair(1, swapped=True, status="gold")])
    silver = stage(tmp_path, "silver", [pair(1), pair(2)])
    manifest = build(tmp_path, [SetInput(stage=human), SetInput(stage=silver)])
    assert ids_of(manifest) == [pid(1, swapped=True), pid(2)]
    assert manifest.shards[1]["counts"]["duplicates"] == 1
    assert_reconciled(manifest)


def test_an_original_listed_first_makes_its_swap_a_duplicate(tmp_path):
    silver = stage(tmp_path, "silver", [pair(1)])
    later = stage(tmp_path, "later", [pair(1, swapped=True), pair(2)])
    manifest = build(tmp_path, [SetInput(stage=silver), SetInput(stage=later)])
    assert ids_of(manifest) == [pid(1), pid(2)]
    assert manifest.counts["duplicates"] == 1
    assert_reconciled(manifest)


# -- exclusion ----------------------------------------------------------------------------------


def test_pairs_humans_decided_are_left_out_by_id_or_parent_id(tmp_path):
    # the exclude stage holds pair 1 as is, and pair 2 swapped (its parent is pair 2's id);
    # pair 3 in the exclude stage is itself a child (parent pair 3) of which silver holds a
    # sibling swap: the sibling's parent is excluded, so it goes too
    human = stage(
        tmp_path, "human",
        [pair(1, status="gold"), pair(2, swapped=True, status="gold"), pair(3, status="gold")],
    )  # fmt: skip
    silver = stage(tmp_path, "silver", [pair(1), pair(2), pair(3, swapped=True), pair(4)])
    manifest = build(tmp_path, [SetInput(stage=silver)], exclude=[human])
    assert ids_of(manifest) == [pid(4)]
    assert manifest.counts["excluded"] == 3
    assert manifest.counts["duplicates"] == 0
    assert_reconciled(manifest)


def test_a_human_swap_removes_the_original_from_silver(tmp_path):
    human = stage(tmp_path, "human", [pair(1, swapped=True, status="gold")])
    silver = stage(tmp_path, "silver", [pair(1), pair(2)])
    manifest = build(tmp_path, [SetInput(stage=silver)], exclude=[human])
    assert ids_of(manifest) == [pid(2)]
    assert manifest.shards[0]["counts"]["excluded"] == 1
    assert_reconciled(manifest)


def test_an_exclude_stage_that_is_an_input_keeps_its_own_pairs(tmp_path):
    human = stage(tmp_path, "human", [pair(1, swapped=True, status="gold"), pair(2, status="gold")])
    silver = stage(tmp_path, "silver", [pair(1), pair(2), pair(3)])
    manifest = build(
        tmp_path,
        [SetInput(stage=silver), SetInput(stage=human, statuses=["gold"])],
        exclude=[human],
    )
    # silver loses both human-decided pairs even though it comes first; the human stage keeps
    # them (the swapped pair too, though its own id and parent are in the exclude stage)
    assert ids_of(manifest) == [pid(3), pid(1, swapped=True), pid(2)]
    assert [s["counts"]["excluded"] for s in manifest.shards] == [2, 0]
    assert manifest.counts["duplicates"] == 0
    assert_reconciled(manifest)


@pytest.mark.parametrize("spelling", ["{}/manifest.json", "{}/", "{}/../human"])
def test_an_exclude_stage_is_itself_however_it_is_spelled(tmp_path, spelling):
    human = stage(tmp_path, "human", [pair(1, swapped=True, status="gold"), pair(2)])
    manifest = build(tmp_path, [SetInput(stage=spelling.format(human))], exclude=[human])
    assert ids_of(manifest) == [pid(1, swapped=True), pid(2)]
    assert manifest.counts["excluded"] == 0


# -- judges' outcomes, statuses, restamping -----------------------------------------------------


def test_judged_outcomes_narrow_and_restamp_with_the_votes(tmp_path):
    attributed = stage(tmp_path, "attributed", [pair(1), pair(2), pair(3), pair(4)])
    verdicts = judged(
        tmp_path,
        {
            pid(1): ("agree", ["chosen", "chosen"]),
            pid(2): ("disagree", ["rejected", "rejected"]),
            pid(3): ("agree", ["chosen", "undecided"]),
        },  # pair 4 was never judged
    )
    agree = SetInput(stage=attributed, judged=verdicts, outcomes=["agree"], status="silver",
                     decided_by="llm", round=2)  # fmt: skip
    manifest = build(tmp_path, [agree])
    rows = rows_of(manifest)
    assert [r["pair_id"] for r in rows] == [pid(1), pid(3)]
    for row in rows:
        assert (row["status"], row["decided_by"], row["round"]) == ("silver", "llm", 2)
        assert row["run_id"] == manifest.run_id
        assert row["evidence"]["human_votes"] == [1, 0]  # the rest of the evidence is kept
        assert row["evidence"]["p_best"] == pytest.approx(0.7)
    assert rows[0]["evidence"]["judge_votes"] == [
        {"judge": "j0", "vote": 1},
        {"judge": "j1", "vote": 1},
    ]
    assert rows[1]["evidence"]["judge_votes"] == [
        {"judge": "j0", "vote": 1},
        {"judge": "j1", "vote": -1},
    ]
    assert manifest.counts["not_selected"] == 2
    assert_reconciled(manifest)

    disagree = build(
        tmp_path,
        [SetInput(stage=attributed, judged=verdicts, outcomes=["disagree"], round=2)],
        name="flip",
    )
    (row,) = rows_of(disagree)
    assert row["pair_id"] == pid(2)
    votes = row["evidence"]["judge_votes"]
    assert votes == [{"judge": "j0", "vote": 0}, {"judge": "j1", "vote": 0}]
    assert (row["status"], row["decided_by"], row["round"]) == ("unverified", "source", 2)
    assert row["run_id"] == disagree.run_id


def test_judged_without_outcomes_keeps_every_judged_pair(tmp_path):
    attributed = stage(tmp_path, "attributed", [pair(1), pair(2), pair(3)])
    verdicts = judged(tmp_path, {pid(1): ("agree", ["chosen"]), pid(3): ("error", [])})
    manifest = build(tmp_path, [SetInput(stage=attributed, judged=verdicts)])
    rows = rows_of(manifest)
    assert [r["pair_id"] for r in rows] == [pid(1), pid(3)]
    assert rows[0]["evidence"]["judge_votes"] == [{"judge": "j0", "vote": 1}]
    assert rows[1]["evidence"]["judge_votes"] is None  # no votes: nothing to record
    assert_reconciled(manifest)


def test_without_restamping_rows_are_unchanged(tmp_path):
    silver = stage(tmp_path, "silver", [pair(1, status="silver")])
    (row,) = rows_of(build(tmp_path, [SetInput(stage=silver)]))
    assert row == pair(1, status="silver")


def test_statuses_filter(tmp_path):
    human = stage(
        tmp_path, "human",
        [pair(1, status="gold"), pair(2, status="discarded"), pair(3, status="gold")],
    )  # fmt: skip
    manifest = build(tmp_path, [SetInput(stage=human, statuses=["gold"])])
    assert ids_of(manifest) == [pid(1), pid(3)]
    assert manifest.counts["not_selected"] == 1
    assert_reconciled(manifest)
    both = build(tmp_path, [SetInput(stage=human, statuses=["gold", "discarded"])], name="both")
    assert both.rows == 3


def test_outcomes_need_a_judged_stage(tmp_path):
    silver = stage(tmp_path, "silver", [pair(1)])
    with pytest.raises(ValueError, match="judged"):
        SetStage(SetConfig(inputs=[SetInput(stage=silver, outcomes=["agree"])], out="unused"))


# -- the empty set ------------------------------------------------------------------------------


def test_a_set_no_pair_survives_is_a_valid_empty_stage(tmp_path):
    human = stage(tmp_path, "human", [pair(1, status="gold")])
    silver = stage(tmp_path, "silver", [pair(1), pair(2)])
    verdicts = judged(tmp_path, {pid(2): ("disagree", ["rejected"])})
    manifest = build(
        tmp_path,
        [SetInput(stage=silver, judged=verdicts, outcomes=["agree"], status="silver", round=1)],
        exclude=[human],
    )
    assert manifest.rows == 0 and manifest.num_shards == 1
    assert manifest.counts["not_selected"] == 2
    (path,) = manifest.paths()
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert table.schema.remove_metadata() == PAIR_SCHEMA
    assert_reconciled(manifest)
    # and an empty set reads as an input to the next one
    again = build(tmp_path, [SetInput(stage=manifest.dir)], exclude=[manifest.dir], name="next")
    assert again.rows == 0
    assert_reconciled(again)


# -- identity and re-runs -----------------------------------------------------------------------


def test_a_changed_input_changes_the_identity(tmp_path):
    silver = stage(tmp_path, "silver", [pair(1)])
    human = stage(tmp_path, "human", [pair(2, status="gold")])
    verdicts = judged(tmp_path, {pid(1): ("agree", ["chosen"])})

    def identity(**changes: str) -> str:
        uris = {"silver": silver, "human": human, "judged": verdicts, **changes}
        spec = SetInput(stage=uris["silver"], judged=uris["judged"])
        config = SetConfig(inputs=[spec], exclude=[uris["human"]], out=str(tmp_path / "out"))
        return SetStage(config).config_hash

    before = identity()
    assert identity() == before
    # the same paths with new content (a new run id of a parent) → a new identity
    for name, rewrite in (
        ("silver", lambda: stage(tmp_path, "silver", [pair(1), pair(5)])),
        ("human", lambda: stage(tmp_path, "human", [pair(2, status="discarded")])),
        ("judged", lambda: judged(tmp_path, {pid(1): ("disagree", ["rejected"])})),
    ):
        old = load_manifest(str(tmp_path / name)).run_id
        rewrite()
        assert load_manifest(str(tmp_path / name)).run_id != old, name
        after = identity()
        assert after != before, name
        before = after
    # where the set is written is no part of it
    spec = SetInput(stage=silver, judged=verdicts)
    elsewhere = SetConfig(inputs=[spec], exclude=[human], out=str(tmp_path / "other"))
    assert SetStage(elsewhere).config_hash == before


def test_a_rerun_skips_finished_shards_and_gives_the_same_manifest(tmp_path, monkeypatch):
    first = stage(tmp_path, "first", [pair(1)], [pair(2)])
    second = stage(tmp_path, "second", [pair(2), pair(3, swapped=True)])
    human = stage(tmp_path, "human", [pair(3, status="gold")])
    inputs = [SetInput(stage=first), SetInput(stage=second, status="silver", round=1)]
    manifest = build(tmp_path, inputs, exclude=[human])
    assert ids_of(manifest) == [pid(1), pid(2)]
    assert_reconciled(manifest)

    def fail(self, index, spec):
        raise AssertionError(f"shard {index} ran again")

    monkeypatch.setattr(SetStage, "run_shard", fail)
    assert build(tmp_path, inputs, exclude=[human]) == manifest
    monkeypatch.undo()

    # a new exclude stage: every shard runs again, under a new identity
    stage(tmp_path, "human", [pair(3, status="gold"), pair(1, status="gold")])
    rebuilt = build(tmp_path, inputs, exclude=[human])
    assert rebuilt.config_hash != manifest.config_hash
    assert ids_of(rebuilt) == [pid(2)]
    assert_reconciled(rebuilt)
