"""Stage 2's keep / flip / discard rule (DESIGN §3) on hand-made p values for every branch, and
the consistency stage over hand-made pairs, score and judgement stages."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synpref_core.annotate.stages import JUDGED_SCHEMA
from synpref_core.curation.consistency import (
    ConsistencyConfig,
    ConsistencyStage,
    consistency_outcomes,
)
from synpref_core.executors import run
from synpref_core.rm.scoring import SCORE_SCHEMA
from synpref_core.schema import PAIR_SCHEMA, empty_attributes, pair_id
from synpref_core.stages import StageError, load_manifest
from tests.stage_helpers import write_stage

# (p_best, p_gold, judges' outcome or None) → (status, reason, asked the judges)
BRANCHES = [
    ((0.9, 0.8, None), ("kept", "", False)),  # both RMs agree: no LLM call
    ((0.9, 0.3, None), ("discarded", "gold_rm_disagrees", False)),
    ((0.4, 0.8, "agree"), ("kept", "", True)),
    ((0.4, 0.8, "disagree"), ("discarded", "judges_disagree", True)),
    ((0.4, 0.3, "disagree"), ("flipped", "", True)),
    ((0.4, 0.3, "agree"), ("discarded", "gold_rm_disagrees", True)),
    ((0.4, 0.8, "undecided"), ("discarded", "judges_undecided", True)),
    ((0.4, 0.3, "undecided"), ("discarded", "judges_undecided", True)),
    ((0.4, 0.8, "error"), ("discarded", "judge_error", True)),
    ((0.4, 0.8, None), ("discarded", "not_annotated", True)),
    ((0.5, 0.5, "disagree"), ("flipped", "", True)),  # 0.5 is not agreement, for either RM
]


@pytest.mark.parametrize(("given", "expected"), BRANCHES)
def test_every_branch_of_the_rule(given, expected):
    p_best, p_gold, judged = given
    status, reason, llm = consistency_outcomes(np.array([p_best]), np.array([p_gold]), [judged])
    assert (status[0], reason[0], bool(llm[0])) == expected


def test_delta_widens_what_the_judges_see():
    status, _, llm = consistency_outcomes(np.array([0.55]), np.array([0.9]), [None], delta=0.1)
    assert llm[0] and status[0] == "discarded"
    status, _, llm = consistency_outcomes(np.array([0.55]), np.array([0.9]), [None], delta=0.0)
    assert not llm[0] and status[0] == "kept"


def pairs_table(n: int) -> pa.Table:
    rows = []
    for i in range(n):
        conversation = [{"role": "user", "content": f"question {i}"}]
        chosen, rejected = f"good {i}", f"bad {i}"
        rows.append({
            "pair_id": pair_id(conversation, chosen, rejected), "conversation": conversation,
            "chosen": chosen, "rejected": rejected, **empty_attributes(),
            "status": "unverified", "decided_by": "source", "round": None,
            "evidence": {"human_votes": [1, 1, -1], "judge_votes": None, "p_best": None,
                         "p_gold": None, "note": None},
            "run_id": "test", "source": "wild", "source_file": "x", "source_row": i,
            "source_subset": None, "parent_id": None, "group_id": None, "meta": None,
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)


def scores_table(ids: list[str], p: list[float]) -> pa.Table:
    n = len(ids)
    return pa.table(
        {"pair_id": ids, "r_chosen": [0.0] * n, "r_rejected": [0.0] * n, "p": p,
         "chosen_tokens": [1] * n, "rejected_tokens": [1] * n},
        schema=SCORE_SCHEMA,
    )  # fmt: skip


def judged_table(outcomes: dict[str, str]) -> pa.Table:
    vote = {"model": "j", "sample": 0, "permutation": ["chosen", "rejected"],
            "template_version": "judge-v1", "raw": "", "verdict": 1, "side": "rejected",
            "error": None}  # fmt: skip
    rows = [
        {"pair_id": pid, "outcome": o, "rule": "majority", "model_votes": [("j", "rejected")],
         "votes": [vote], "few_shot_ids": [], "zero_shot": True, "template_version": "judge-v1",
         "reason": None}
        for pid, o in outcomes.items()
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=JUDGED_SCHEMA)


@pytest.fixture
def inputs(tmp_path) -> dict:
    pairs = pairs_table(len(BRANCHES))
    ids = pairs["pair_id"].to_pylist()
    best = [b[0][0] for b in BRANCHES]
    gold = [b[0][1] for b in BRANCHES]
    asked = {ids[i]: b[0][2] for i, b in enumerate(BRANCHES) if b[0][2] is not None}
    return {
        "pairs": write_stage(pairs, str(tmp_path / "wild")),
        "best": write_stage(scores_table(ids, best), str(tmp_path / "best"), SCORE_SCHEMA),
        "gold": write_stage(scores_table(ids, gold), str(tmp_path / "gold"), SCORE_SCHEMA),
        "judged": write_stage(judged_table(asked), str(tmp_path / "judged"), JUDGED_SCHEMA),
        "ids": ids,
    }


def test_the_stage_writes_every_row_once_with_its_evidence(inputs, tmp_path):
    config = ConsistencyConfig(
        pairs=inputs["pairs"], best_scores=inputs["best"], gold_scores=inputs["gold"],
        judged=inputs["judged"], out=str(tmp_path / "out"),
    )  # fmt: skip
    manifest = load_manifest(run(ConsistencyStage(config), progress=False))
    rows = pq.read_table(manifest.paths()[0]).to_pylist()
    assert [(r["status"], r["evidence"]["note"]) for r in rows] == [
        (status, reason or status) for _, (status, reason, _) in BRANCHES
    ]
    counts = manifest.counts
    assert counts["kept"] + counts["flipped"] + counts["discarded"] == counts["rows"] == len(rows)
    assert counts["discarded"] == sum(v for k, v in counts.items() if k.startswith("discarded:"))
    flipped = rows[4]
    original = pairs_table(len(BRANCHES)).slice(4, 1).to_pylist()[0]
    assert flipped["chosen"] == original["rejected"] and flipped["rejected"] == original["chosen"]
    assert flipped["parent_id"] == original["pair_id"] != flipped["pair_id"]
    assert flipped["pair_id"] == pair_id(original["conversation"], "bad 4", "good 4")
    # evidence in the flipped pair's own order: the judge preferred the original rejected side,
    # which is now chosen; p_best 0.4 becomes 0.6
    assert flipped["evidence"]["judge_votes"] == [{"judge": "j", "vote": 1}]
    assert flipped["evidence"]["p_best"] == pytest.approx(0.6)
    assert flipped["evidence"]["human_votes"] == [0, 0, -1]  # the humans preferred "good 4"
    assert rows[0]["evidence"]["human_votes"] == [1, 1, -1]
    assert rows[3]["evidence"]["judge_votes"] == [{"judge": "j", "vote": 0}]
    assert rows[0]["decided_by"] == "rm" and rows[0]["evidence"]["judge_votes"] is None
    assert rows[2]["decided_by"] == "llm"
    assert len({r["pair_id"] for r in rows}) == len(rows)


def test_without_judging_the_pairs_the_best_rm_doubts_are_not_annotated(inputs, tmp_path):
    config = ConsistencyConfig(pairs=inputs["pairs"], best_scores=inputs["best"],
                               gold_scores=inputs["gold"], out=str(tmp_path / "out"))  # fmt: skip
    counts = load_manifest(run(ConsistencyStage(config), progress=False)).counts
    assert counts["discarded:not_annotated"] == sum(1 for b in BRANCHES if b[0][0] <= 0.5)
    assert counts["kept"] == 1


def test_scores_of_other_pairs_are_refused_in_one_line(inputs, tmp_path):
    other = scores_table(list(reversed(inputs["ids"])), [0.9] * len(inputs["ids"]))
    wrong = write_stage(other, str(tmp_path / "other"), SCORE_SCHEMA)
    config = ConsistencyConfig(pairs=inputs["pairs"], best_scores=wrong,
                               gold_scores=inputs["gold"], out=str(tmp_path / "out"))  # fmt: skip
    with pytest.raises(StageError) as info:
        run(ConsistencyStage(config), progress=False)
    assert "\n" not in str(info.value)
