"""Stage 1's bookkeeping: gold accuracy per category over hand-made score and gold stages, and
the round records a re-run resumes from (the chain of hashes, lost manifests, torn records)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import BaseModel

from synpref_core.curation.stage1 import (
    UNKNOWN,
    chain_hash,
    completed_rounds,
    gold_accuracy,
    record_path,
    rounds_identity,
    save_round,
)
from synpref_core.rm.scoring import SCORE_SCHEMA
from synpref_core.run_summary import RoundRecord
from synpref_core.schema import PAIR_SCHEMA, empty_attributes, pair_id
from tests.stage_helpers import write_stage


def gold_pair(n: int, category: str | None) -> dict:
    conversation = [{"role": "user", "content": f"question {n}"}]
    attributes = empty_attributes()
    if category is not None:
        attributes["task_category"] = {"value": category, "source": "human"}
    return {
        "pair_id": pair_id(conversation, f"good {n}", f"bad {n}"), "conversation": conversation,
        "chosen": f"good {n}", "rejected": f"bad {n}", **attributes, "status": "gold",
        "decided_by": "human", "round": 0, "evidence": None, "run_id": "hand", "source": "wild",
        "source_file": "x", "source_row": n, "source_subset": None, "parent_id": None,
        "group_id": None, "meta": None,
    }  # fmt: skip


def write_gold(root: Path, rows: list[tuple[str | None, float]]) -> tuple[str, str]:
    """A gold stage and its scores: (category or None, p) per pair."""
    pairs = [gold_pair(n, category) for n, (category, _) in enumerate(rows)]
    ids = [row["pair_id"] for row in pairs]
    n = len(rows)
    scores = pa.table(
        {"pair_id": ids, "r_chosen": [0.0] * n, "r_rejected": [0.0] * n,
         "p": [p for _, p in rows], "chosen_tokens": [1] * n, "rejected_tokens": [1] * n},
        schema=SCORE_SCHEMA,
    )  # fmt: skip
    gold = write_stage(pa.Table.from_pylist(pairs, schema=PAIR_SCHEMA), str(root / "gold"))
    return write_stage(scores, str(root / "scores"), SCORE_SCHEMA), gold


# -- gold accuracy ------------------------------------------------------------------------------


def test_gold_accuracy_overall_and_per_category(tmp_path):
    scores, gold = write_gold(
        tmp_path,
        [
            ("coding", 0.9), ("coding", 0.2), ("math", 0.6), ("math", 0.51),
            (None, 0.5),  # 0.5 is not right
            (None, 0.8), ("", 0.7),  # an empty category counts as none
        ],
    )  # fmt: skip
    overall, by_category, n = gold_accuracy(scores, gold)
    assert n == 7
    assert overall == pytest.approx(5 / 7)
    assert by_category == pytest.approx({"coding": 0.5, "math": 1.0, UNKNOWN: 2 / 3})
    assert list(by_category) == sorted(by_category)
    assert UNKNOWN == "(no category)"


def test_gold_accuracy_of_gold_without_categories(tmp_path):
    scores, gold = write_gold(tmp_path, [(None, 0.1), (None, 0.9)])
    assert gold_accuracy(scores, gold) == (0.5, {UNKNOWN: 0.5}, 2)


def test_gold_accuracy_of_nothing_scored(tmp_path):
    scores, gold = write_gold(tmp_path, [])
    assert gold_accuracy(scores, gold) == (None, {}, 0)


# -- the identity and the chain of records ------------------------------------------------------


class Flow(BaseModel):
    out: str = "runs/x"
    rounds: int = 3
    top_k: int = 8


def test_rounds_identity_ignores_what_is_excluded():
    base = rounds_identity(Flow(), {"rounds"})
    assert rounds_identity(Flow(rounds=5), {"rounds"}) == base
    assert rounds_identity(Flow(top_k=9), {"rounds"}) != base
    assert rounds_identity(Flow(rounds=5), set()) != rounds_identity(Flow(), set())


def test_chain_hash_depends_on_identity_and_the_record_before_not_its_seconds():
    one = RoundRecord(round=1, rm_dir="rm-1", gold_accuracy=0.7, seconds=3.0)
    assert chain_hash("a", None) != chain_hash("b", None)
    assert chain_hash("a", one) != chain_hash("a", None)
    assert chain_hash("a", one) == chain_hash("a", one.model_copy(update={"seconds": 99.0}))
    assert chain_hash("a", one) != chain_hash("a", one.model_copy(update={"gold_accuracy": 0.8}))


@pytest.fixture
def rounds(tmp_path) -> dict:
    """Three saved rounds, each naming a manifest of its own, chained as the flow chains them."""
    out = tmp_path / "run"
    identity = rounds_identity(Flow(), {"rounds"})
    records: list[RoundRecord] = []
    for n in (1, 2, 3):
        silver = write_stage(
            pa.Table.from_pylist([gold_pair(n, "math")], schema=PAIR_SCHEMA),
            str(out / f"round-{n}" / "silver"),
        )
        record = RoundRecord(
            round=n, chain=chain_hash(identity, records[-1] if records else None),
            rm_dir=f"rm-{n}", gold_accuracy=0.1 * n + 0.05,
            gold_accuracy_by_category={"math": 1 / 3, UNKNOWN: 0.25},
            sizes={"silver": n, "gold": 2}, judge_vs_gold=[{"judge": "j", "accuracy": 2 / 3}],
            manifests={"silver": f"{silver}/manifest.json"}, seconds=1.5 * n,
        )  # fmt: skip
        save_round(out, record)
        records.append(record)
    return {"out": out, "identity": identity, "records": records}


def test_every_record_of_an_unchanged_config_is_kept(rounds):
    kept = completed_rounds(rounds["out"], rounds["identity"])
    assert kept == rounds["records"]
    assert record_path(rounds["out"], 2) == rounds["out"] / "rounds" / "round-002.json"


def test_nothing_is_kept_before_the_first_round(tmp_path):
    assert completed_rounds(tmp_path / "nothing", "identity") == []


def test_a_changed_config_keeps_no_round(rounds):
    assert completed_rounds(rounds["out"], rounds_identity(Flow(top_k=9), {"rounds"})) == []


def test_a_lost_manifest_in_round_two_keeps_round_one(rounds):
    os.remove(rounds["records"][1].manifests["silver"])
    assert completed_rounds(rounds["out"], rounds["identity"]) == rounds["records"][:1]


def test_a_torn_manifest_in_round_two_keeps_round_one(rounds):
    Path(rounds["records"][1].manifests["silver"]).write_text('{"stage": ')
    assert completed_rounds(rounds["out"], rounds["identity"]) == rounds["records"][:1]


@pytest.mark.parametrize("torn", ['{"round": 2, "chain": ', "", '["not", "a", "record"]'])
def test_a_torn_record_stops_there(rounds, torn):
    record_path(rounds["out"], 2).write_text(torn)
    assert completed_rounds(rounds["out"], rounds["identity"]) == rounds["records"][:1]


def test_a_torn_first_record_keeps_nothing(rounds):
    record_path(rounds["out"], 1).write_text("{")
    assert completed_rounds(rounds["out"], rounds["identity"]) == []


def test_a_missing_record_stops_there(rounds):
    record_path(rounds["out"], 2).unlink()
    assert completed_rounds(rounds["out"], rounds["identity"]) == rounds["records"][:1]


def test_a_changed_record_breaks_the_chain_after_it(rounds):
    path = record_path(rounds["out"], 1)
    record = json.loads(path.read_text())
    record["gold_accuracy"] = 0.99  # a round 1 the next rounds were not built on
    path.write_text(json.dumps(record))
    kept = completed_rounds(rounds["out"], rounds["identity"])
    assert [r.round for r in kept] == [1]
    assert kept[0].gold_accuracy == 0.99


def test_a_changed_duration_keeps_the_chain(rounds):
    path = record_path(rounds["out"], 1)
    record = json.loads(path.read_text())
    record["seconds"] = 1234.5
    path.write_text(json.dumps(record))
    assert [r.round for r in completed_rounds(rounds["out"], rounds["identity"])] == [1, 2, 3]


def test_a_record_saved_in_the_wrong_place_stops_the_chain(rounds):
    # round 2's file holding round 3's record: its chain names round 2, not round 1
    record_path(rounds["out"], 2).write_text(rounds["records"][2].model_dump_json())
    assert completed_rounds(rounds["out"], rounds["identity"]) == rounds["records"][:1]


def test_a_human_step_that_nobody_can_answer_is_refused_at_config_time():
    from pydantic import ValidationError

    from flows.stage1 import HumanStep

    with pytest.raises(ValidationError, match="wait = none needs annotators"):
        HumanStep(wait="none")
    with pytest.raises(ValidationError, match="wait = replay needs replay"):
        HumanStep(wait="replay", replay=[])
    assert HumanStep(wait="none", annotators=["ana"]).annotators == ["ana"]
