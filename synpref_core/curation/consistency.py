"""Stage 2's dual-RM consistency filter (DESIGN §3): keep, flip or discard every in-the-wild pair.

Inputs, all over the same D_wild pairs stage and in its shard layout: the best RM's scores
(p_best), the gold RM's scores (p_gold), and, for the pairs the best RM does not back
(p_best ≤ 0.5 + δ, picked by :class:`NeedsJudgeStage`), the judges' verdicts (a
:class:`~synpref_core.annotate.stages.JudgeStage` over them, attributes drafted first). Then, per
pair (:func:`consistency_outcomes`):

- the **second check** is the best RM when it agrees (p_best > 0.5 + δ), else the judges'
  ensemble outcome: agree / disagree / undecided / error (``not_annotated`` when no judging ran);
- **kept** when the gold RM agrees (p_gold > 0.5) and the second check agrees;
- **flipped** when the gold RM disagrees and the second check disagrees: chosen and rejected are
  swapped, the pair gets the id of its new content and ``parent_id`` names the original;
- everything else is **discarded**, the reason kept: ``gold_rm_disagrees`` (the second check
  agrees, the gold RM does not), ``judges_disagree`` (the gold RM agrees, the judges prefer the
  rejected side), ``judges_undecided``, ``judge_error``, ``not_annotated``.

Every input row is written once with its status, who decided (``rm`` when the best RM backed it,
``llm`` when the judges were asked), and the evidence in the pair's stored order (p_best, p_gold,
each judge vote: 1 = stored chosen better), so ``rows = kept + flipped + discarded`` per shard
and per run, with a count per reason. Pairs quarantined at ingest never reach this stage; the
flow adds their count to the run's total.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from synpref_core.config import StrictModel
from synpref_core.curation.v1select import (
    RmAgreesConfig,
    ScoredPairsStage,
    check_layout,
    match_ids,
    read_columns,
)
from synpref_core.io import fs as fsio
from synpref_core.schema import EVIDENCE, PAIR_SCHEMA, pair_id
from synpref_core.stages import (
    Manifest,
    MapStage,
    ShardResult,
    StageError,
    load_manifest,
    stage_identity,
)

STAGE2_STATUSES = ("kept", "flipped", "discarded")
DISCARD_REASONS = (
    "gold_rm_disagrees",
    "judges_disagree",
    "judges_undecided",
    "judge_error",
    "not_annotated",
)
_SECOND = {"agree", "disagree", "undecided", "error", "not_annotated"}
_VOTE = {"chosen": 1, "rejected": 0}


class NeedsJudgeStage(ScoredPairsStage):
    """The pairs the best RM does not back: p_best ≤ 0.5 + margin (δ). They go to the judges."""

    name = "needs_judge"

    def keep(self, pairs: pa.Table, scores: pa.Table) -> np.ndarray:
        return np.asarray(pc.less_equal(scores["p"], 0.5 + self.settings.margin))


def needs_judge_config(pairs: str, best_scores: str, delta: float, out: str) -> RmAgreesConfig:
    return RmAgreesConfig(pairs=pairs, scores=best_scores, margin=delta, out=out)


def consistency_outcomes(
    p_best: np.ndarray, p_gold: np.ndarray, judged: list[str | None], delta: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(status, reason, llm_checked) per pair, DESIGN §3; ``judged[i]`` is the ensemble outcome
    of pair i (None: not judged). The reason is "" for kept and flipped pairs."""
    best_agrees = np.asarray(p_best) > 0.5 + delta
    gold_agrees = np.asarray(p_gold) > 0.5
    second = np.array(
        ["agree" if b else (j if j is not None else "not_annotated") for b, j in zip(
            best_agrees, judged, strict=True)],
        dtype=object,
    )  # fmt: skip
    if unknown := set(second) - _SECOND:
        raise StageError(f"unknown judge outcomes {sorted(unknown)}")
    status = np.full(len(second), "discarded", dtype=object)
    status[gold_agrees & (second == "agree")] = "kept"
    status[~gold_agrees & (second == "disagree")] = "flipped"
    reason = np.full(len(second), "", dtype=object)
    discarded = status == "discarded"
    reason[discarded & (second == "agree")] = "gold_rm_disagrees"
    reason[discarded & (second == "disagree")] = "judges_disagree"
    reason[discarded & (second == "undecided")] = "judges_undecided"
    reason[discarded & (second == "error")] = "judge_error"
    reason[discarded & (second == "not_annotated")] = "not_annotated"
    return status, reason, ~best_agrees


class ConsistencyConfig(StrictModel):
    """The filter's inputs (module docstring) and δ."""

    pairs: str = Field(description="D_wild: a finished pairs stage.")
    best_scores: str = Field(description="The best RM's score stage over `pairs`.")
    gold_scores: str = Field(description="The gold RM's score stage over `pairs`.")
    judged: str | None = Field(
        None, description="Judge stage over the pairs with p_best ≤ 0.5 + δ; None: not judged."
    )
    delta: float = Field(0.0, ge=0.0, lt=0.5, description="δ: the best RM agrees at p > 0.5 + δ.")
    out: str = Field(description="Output stage directory.")
    batch_rows: int = Field(10_000, ge=1)


class ConsistencyStage(MapStage):
    name = "consistency"
    output_schema = PAIR_SCHEMA
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"out", "batch_rows"})

    def __init__(self, config: ConsistencyConfig):
        self.best = load_manifest(config.best_scores)
        self.gold = load_manifest(config.gold_scores)
        self.judged = load_manifest(config.judged) if config.judged else None
        super().__init__(config, parent=config.pairs)
        check_layout(self.parent, self.best)
        check_layout(self.parent, self.gold)
        if self.judged is not None and len(self.judged.entries()) != len(self.parent.entries()):
            raise StageError(
                f"{self.judged.uri} has {len(self.judged.entries())} files, {self.parent.uri} "
                f"{len(self.parent.entries())}: judge the pairs picked from this very stage"
            )
        self.parents += [m.uri for m in self.inputs()[1:]]
        self.shard: dict[str, Any] = {}

    def inputs(self) -> list[Manifest]:
        return [m for m in (self.parent, self.best, self.gold, self.judged) if m is not None]

    def identity(self) -> str:
        return stage_identity(self.name, self.settings, self.runtime_fields, self.inputs())

    def plan(self) -> list[dict[str, Any]]:
        plan = super().plan()
        for key, manifest in (("best", self.best), ("gold", self.gold), ("judged", self.judged)):
            if manifest is not None:
                for spec, entry in zip(plan, manifest.entries(), strict=True):
                    spec[key] = entry["path"]
        return plan

    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        self.shard = {
            "spec": spec,
            "best": read_columns(fsio.join(self.best.dir, spec["best"]), ["pair_id", "p"]),
            "gold": read_columns(fsio.join(self.gold.dir, spec["gold"]), ["pair_id", "p"]),
            "judged": self._judgements(spec),
            "offset": 0,
            "counts": {},
        }
        try:
            return super().run_shard(index, spec)
        finally:
            self.shard = {}

    def _judgements(self, spec: dict[str, Any]) -> dict[str, tuple[str, list]]:
        if self.judged is None:
            return {}
        uri = fsio.join(self.judged.dir, spec["judged"])
        table = read_columns(uri, ["pair_id", "outcome", "votes"])
        return {
            pid: (outcome, votes)
            for pid, outcome, votes in zip(
                table["pair_id"].to_pylist(),
                table["outcome"].to_pylist(),
                table["votes"].to_pylist(),
                strict=True,
            )
        }

    def _scores(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        start, n = self.shard["offset"], batch.num_rows
        self.shard["offset"] += n
        found = []
        for key in ("best", "gold"):
            rows = self.shard[key].slice(start, n)
            match_ids(
                batch.column("pair_id"), rows["pair_id"].combine_chunks(),
                self.parent.uri, getattr(self, key).uri,
            )  # fmt: skip
            found.append(rows["p"].to_numpy())
        return found[0], found[1]

    def map_batch(self, batch: pa.RecordBatch, model: None) -> pa.Table:
        p_best, p_gold = self._scores(batch)
        ids = batch.column("pair_id").to_pylist()
        judged = self.shard["judged"]
        outcomes = [judged[pid][0] if pid in judged else None for pid in ids]
        status, reason, llm = consistency_outcomes(p_best, p_gold, outcomes, self.settings.delta)
        votes = [judged[pid][1] if asked and pid in judged else [] for pid, asked in zip(
            ids, llm, strict=True)]  # fmt: skip
        self._count(status, reason, llm)
        return apply_outcomes(
            pa.Table.from_batches([batch]), status, reason, llm, p_best, p_gold, votes, self.run_id
        )

    def _count(self, status: np.ndarray, reason: np.ndarray, llm: np.ndarray) -> None:
        counts = self.shard["counts"] = {"llm_checked": int(llm.sum())}
        for name in STAGE2_STATUSES:
            counts[name] = int((status == name).sum())
        for name in DISCARD_REASONS:
            counts[f"discarded:{name}"] = int((reason == name).sum())

    def batch_counts(self, batch: pa.RecordBatch, out: pa.Table) -> dict[str, int]:
        return self.shard["counts"]


def apply_outcomes(
    table: pa.Table, status: np.ndarray, reason: np.ndarray, llm: np.ndarray,
    p_best: np.ndarray, p_gold: np.ndarray, votes: list[list[dict]], run_id: str,
) -> pa.Table:  # fmt: skip
    """The rows of ``table`` with their Stage 2 outcome: status, who decided, the evidence in
    each row's stored order, and flipped rows swapped, re-identified and linked to the original.
    Column operations; Python runs only over judged and flipped rows."""
    flip = status == "flipped"
    mask = pa.array(flip)
    chosen = pc.if_else(mask, table["rejected"], table["chosen"])
    rejected = pc.if_else(mask, table["chosen"], table["rejected"])
    ids = table["pair_id"].to_pylist()
    new_ids = list(ids)
    conversations = table["conversation"].filter(mask).to_pylist()
    flipped_rows = np.flatnonzero(flip)
    for i, conversation in zip(flipped_rows, conversations, strict=True):
        new_ids[i] = pair_id(conversation, chosen[int(i)].as_py(), rejected[int(i)].as_py())
    parent = pc.if_else(mask, table["pair_id"], table["parent_id"])
    notes = np.where(status == "discarded", reason, np.where(flip, "flipped", "kept"))
    evidence = pa.StructArray.from_arrays(
        [
            _human_votes(pc.struct_field(table["evidence"], "human_votes"), flip),
            pa.array([_judge_votes(v, f) for v, f in zip(votes, flip, strict=True)],
                     EVIDENCE.field("judge_votes").type),
            pa.array(np.where(flip, 1.0 - p_best, p_best), pa.float64()),
            pa.array(np.where(flip, 1.0 - p_gold, p_gold), pa.float64()),
            pa.array(notes.tolist(), pa.string()),
        ],
        fields=list(EVIDENCE),
    )  # fmt: skip
    columns = {
        "pair_id": pa.array(new_ids, pa.string()),
        "chosen": chosen,
        "rejected": rejected,
        "status": pa.array(status.tolist(), pa.string()),
        "decided_by": pa.array(np.where(llm, "llm", "rm").tolist(), pa.string()),
        "evidence": evidence,
        "run_id": pa.array([run_id] * table.num_rows, pa.string()),
        "parent_id": parent,
    }
    for name, column in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def _human_votes(column: pa.ChunkedArray, flip: np.ndarray) -> pa.Array:
    """Human votes in each row's stored order: a flipped row's 1 and 0 swap (-1 stays)."""
    votes = column.to_pylist()
    for i in np.flatnonzero(flip):
        if votes[i] is not None:
            votes[i] = [1 - v if v in (0, 1) else v for v in votes[i]]
    return pa.array(votes, EVIDENCE.field("human_votes").type)


def _judge_votes(votes: list[dict[str, Any]], flip: bool) -> list[dict[str, Any]] | None:
    """Each vote as 1 (stored chosen better), 0 or -1 (no verdict), in the stored order."""
    if not votes:
        return None
    out = []
    for vote in votes:
        value = _VOTE.get(vote["side"], -1)
        out.append({"judge": vote["model"], "vote": 1 - value if flip and value >= 0 else value})
    return out
