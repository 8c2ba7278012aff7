"""Aggregating votes: self-consistency per model, then majority / unanimity / weighted."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from synpref_core.annotate.ensemble import (
    JUDGEMENT_SCHEMA,
    EnsembleConfig,
    judge_pairs,
    judgements_table,
    merge_models,
    model_vote,
    read_vote,
)
from synpref_core.annotate.prompts import JudgePrompt

SHOWN = JudgePrompt([], ("chosen", "rejected"), "judge-v1")
SWAPPED = JudgePrompt([], ("rejected", "chosen"), "judge-v1")


def votes_for(pair_id: str, model: str, answers: list[str]) -> list:
    """Samples alternate the shown order, as seeded permutations do."""
    prompts = [SHOWN, SWAPPED]
    return [read_vote(pair_id, model, s, prompts[s % 2], a) for s, a in enumerate(answers)]


def test_votes_are_mapped_back_through_the_permutation():
    shown, swapped = votes_for("p", "m", ["Candidate 1", "Candidate 1"])
    assert (shown.verdict, shown.side) == (1, "chosen")
    assert (swapped.verdict, swapped.side) == (1, "rejected")
    assert read_vote("p", "m", 0, SHOWN, "no idea").side is None


def test_self_consistency_majority_and_ties():
    assert model_vote(["chosen", "chosen", "rejected"]) == "chosen"
    assert model_vote(["rejected", None, None]) == "rejected"
    assert model_vote(["chosen", "rejected"]) is None
    assert model_vote([None, None]) is None


def test_majority_over_models():
    assert merge_models({"a": "chosen", "b": "chosen", "c": "rejected"}) == "agree"
    assert merge_models({"a": "rejected", "b": "rejected", "c": None}) == "disagree"
    assert merge_models({"a": "chosen", "b": "rejected"}) == "undecided"
    assert merge_models({"a": None, "b": None}) == "undecided"


def test_unanimity_needs_every_model():
    rule = EnsembleConfig(rule="unanimity")
    assert merge_models({"a": "rejected", "b": "rejected"}, rule) == "disagree"
    assert merge_models({"a": "chosen", "b": "chosen", "c": "rejected"}, rule) == "undecided"
    assert merge_models({"a": "chosen", "b": None}, rule) == "undecided"


def test_weighted_sums_model_weights():
    rule = EnsembleConfig(rule="weighted", weights={"big": 2.5})
    votes = {"big": "rejected", "small1": "chosen", "small2": "chosen"}
    assert merge_models(votes, rule) == "disagree"
    tie = EnsembleConfig(rule="weighted", weights={"big": 2.0})
    assert merge_models(votes, tie) == "undecided"
    with pytest.raises(ValidationError, match="positive"):
        EnsembleConfig(rule="weighted", weights={"big": 0})


def test_judge_pairs_keeps_every_vote_as_evidence():
    votes = [
        *votes_for("p1", "best", ["Candidate 1", "Candidate 2", "Candidate 1"]),  # chosen x3
        *votes_for("p1", "gold", ["2", "1", "garbage"]),  # rejected x2
        *votes_for("p2", "best", ['{"winner": 1}', "Candidate 1"]),  # a 1-1 tie
        *votes_for("p2", "gold", ["Candidate 1"]),
    ]
    one, two = judge_pairs(votes, ["best", "gold"])
    assert (one.outcome, one.model_votes) == ("undecided", {"best": "chosen", "gold": "rejected"})
    assert (two.outcome, two.model_votes) == ("agree", {"best": None, "gold": "chosen"})
    assert judge_pairs(votes, ["best", "gold"], EnsembleConfig(rule="unanimity"))[1].outcome == (
        "undecided"
    )
    table = judgements_table([one, two])
    assert table.schema == JUDGEMENT_SCHEMA
    evidence = table.column("votes").to_pylist()[0]
    assert len(evidence) == 6 and evidence[5]["raw"] == "garbage"
    assert evidence[5]["verdict"] is None and evidence[1]["permutation"] == ["rejected", "chosen"]
    assert dict(table.column("model_votes").to_pylist()[1])["best"] == "undecided"
