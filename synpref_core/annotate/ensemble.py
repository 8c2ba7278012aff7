"""Aggregating judge votes into one judgement per pair (DESIGN §2 step 3).

Two levels, pure functions over plain data:

1. **Per model (self-consistency).** Each judge model answers n samples of a pair; its parsed
   verdicts, mapped back to the stored sides, are counted and the majority side is the model's
   vote (:func:`model_vote`). A tie, or no parsable answer, is no vote (``None``).
2. **Across models** (:func:`merge_models`), by ``EnsembleConfig.rule``:
   ``majority`` (default: more models for one side than the other; models without a vote
   abstain), ``unanimity`` (every configured model votes, all for the same side), ``weighted``
   (the sides' summed model weights; a model missing from ``weights`` weighs 1).

A tie at the top is ``undecided``. The judgement checks the stored order: ``agree`` (the judges
prefer the stored chosen), ``disagree`` (they prefer the stored rejected: a flip candidate) or
``undecided``, and keeps every vote as evidence (:func:`judgements_table`). A pair with a
request that failed (no answer after the retries) is ``error``: its judgement would not be the
configured ensemble's, and a re-run re-asks only what failed (answers are cached).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from synpref_core.annotate.parse import parse_verdict, unpermute
from synpref_core.annotate.prompts import JudgePrompt
from synpref_core.config import StrictModel

Outcome = Literal["agree", "disagree", "undecided", "error"]
OUTCOMES: tuple[str, ...] = ("agree", "disagree", "undecided", "error")
_OUTCOME = {"chosen": "agree", "rejected": "disagree", None: "undecided"}

VOTE = pa.struct(
    [
        ("model", pa.string()),
        ("sample", pa.int32()),
        ("permutation", pa.list_(pa.string())),  # stored side shown as Candidate 1, 2
        ("template_version", pa.string()),
        ("raw", pa.string()),  # the model's answer as received
        ("verdict", pa.int8()),  # 1 / 2 as parsed; null: no verdict
        ("side", pa.string()),  # chosen / rejected after unpermuting; null: no verdict
        ("error", pa.string()),  # the request's failure ("http_400: ..."); null: answered
    ]
)
JUDGEMENT_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("model_votes", pa.map_(pa.string(), pa.string())),  # model → side or "undecided"
        pa.field("votes", pa.list_(VOTE), nullable=False),
    ]
)


@dataclass(frozen=True)
class Vote:
    """One sampled answer of one judge model for one pair."""

    pair_id: str
    model: str
    sample: int
    permutation: tuple[str, str]
    template_version: str
    raw: str
    verdict: int | None  # as parsed: 1 / 2, None when the answer named no single candidate
    side: str | None  # the verdict mapped back: "chosen" / "rejected"
    error: str | None = None  # the request failed: code and reason, no answer


@dataclass(frozen=True)
class Judgement:
    pair_id: str
    outcome: Outcome
    rule: str
    model_votes: dict[str, str | None]  # each model's self-consistency vote
    votes: tuple[Vote, ...]


def read_vote(pair_id: str, model: str, sample: int, prompt: JudgePrompt, raw: str) -> Vote:
    """The vote in answer ``raw`` to ``prompt``: parsed, then mapped back to a stored side."""
    verdict = parse_verdict(raw)
    side = None if verdict is None else unpermute(verdict, prompt.permutation)
    return Vote(
        pair_id, model, sample, prompt.permutation, prompt.template_version, raw, verdict, side
    )


class EnsembleConfig(StrictModel):
    """How the judges' votes are merged (ours: majority per model, majority over models)."""

    rule: Literal["majority", "unanimity", "weighted"] = Field(
        "majority", description="Cross-model merge; a tie is undecided."
    )
    weights: dict[str, float] = Field(
        default_factory=dict, description="Per-model weights for 'weighted' (missing: 1)."
    )

    @model_validator(mode="after")
    def _weights_are_positive(self) -> EnsembleConfig:
        bad = {m: w for m, w in self.weights.items() if not w > 0}
        if bad:
            raise ValueError(f"weights must be positive, got {bad}")
        return self


def model_vote(sides: Iterable[str | None]) -> str | None:
    """The majority side of one model's samples; None on a tie or when no sample parsed."""
    counts = Counter(side for side in sides if side is not None)
    chosen, rejected = counts["chosen"], counts["rejected"]
    if chosen == rejected:
        return None
    return "chosen" if chosen > rejected else "rejected"


def merge_models(
    model_votes: dict[str, str | None], config: EnsembleConfig | None = None
) -> Outcome:
    """The cross-model outcome of each model's vote (None: the model has no vote)."""
    config = config or EnsembleConfig()
    if config.rule == "unanimity":
        sides = set(model_votes.values())
        return _OUTCOME[sides.pop()] if len(sides) == 1 else "undecided"
    weight = (lambda m: config.weights.get(m, 1.0)) if config.rule == "weighted" else (lambda m: 1)
    score = {"chosen": 0.0, "rejected": 0.0}
    for model, side in model_votes.items():
        if side is not None:
            score[side] += weight(model)
    if score["chosen"] == score["rejected"]:
        return "undecided"
    return "agree" if score["chosen"] > score["rejected"] else "disagree"


def judge_pairs(
    votes: Iterable[Vote], models: Sequence[str], config: EnsembleConfig | None = None
) -> list[Judgement]:
    """One judgement per pair of ``votes`` (in first-seen order). Every model in ``models``
    takes part, voting None when it has no sample of a pair (which blocks unanimity)."""
    config = config or EnsembleConfig()
    by_pair: dict[str, list[Vote]] = defaultdict(list)
    for vote in votes:
        by_pair[vote.pair_id].append(vote)
    judgements = []
    for pair_id, pair_votes in by_pair.items():
        per_model = {m: model_vote(v.side for v in pair_votes if v.model == m) for m in models}
        failed = any(v.error is not None for v in pair_votes)
        outcome = "error" if failed else merge_models(per_model, config)
        judgements.append(Judgement(pair_id, outcome, config.rule, per_model, tuple(pair_votes)))
    return judgements


def judgements_table(judgements: Sequence[Judgement]) -> pa.Table:
    """The judgements as Arrow (``JUDGEMENT_SCHEMA``), every vote kept as evidence."""
    rows = [
        {
            "pair_id": j.pair_id,
            "outcome": j.outcome,
            "rule": j.rule,
            "model_votes": [(m, side or "undecided") for m, side in j.model_votes.items()],
            "votes": [_vote_row(v) for v in j.votes],
        }
        for j in judgements
    ]
    return pa.Table.from_pylist(rows, schema=JUDGEMENT_SCHEMA)


def _vote_row(vote: Vote) -> dict:
    return {
        "model": vote.model,
        "sample": vote.sample,
        "permutation": list(vote.permutation),
        "template_version": vote.template_version,
        "raw": vote.raw,
        "verdict": vote.verdict,
        "side": vote.side,
        "error": vote.error,
    }
