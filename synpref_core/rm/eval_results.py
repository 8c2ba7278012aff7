"""Typed results of a benchmark evaluation, and the benchmark formats it knows (the scorers
are in ``rm/benchmarks.py``; this module stays light, so the command line can list formats).

An :class:`EvalResult` is what ``synpref eval``, the evaluate task and ``eval.json`` report. The
extras only some formats have (RM-Bench levels, best-of-N groups, RMB kinds) default to *unset*,
and :meth:`EvalResult.json_dict` leaves unset fields out, so every format's JSON holds its own
keys only.
"""

from __future__ import annotations

from typing import Any, Literal

from synpref_core.config import StrictModel

PAIRWISE_FORMATS: tuple[str, ...] = (
    "pairs",
    "hh-rlhf",
    "pandalm",
    "llmbar",
    "offsetbias",
    "rewardbench",
)
EVAL_FORMATS: tuple[str, ...] = (*PAIRWISE_FORMATS, "rm-bench", "rmb", "judgebench")

Rate = float | None  # a fraction in [0, 1]; None where there was nothing to score


class SubsetScore(StrictModel):
    """One subset (or category) of a benchmark: a row of the per-subset table."""

    kind: Literal["bon", "pairwise"] | None = None  # RMB: the half the subset belongs to
    accuracy: Rate
    easy: Rate = None  # RM-Bench difficulty levels
    normal: Rate = None
    hard: Rate = None
    length_baseline: Rate
    length_baseline_levels: dict[str, Rate] | None = None  # RM-Bench, easy/normal/hard
    count: int
    groups: int | None = None  # RM-Bench items, RMB best-of-N groups
    matrix: list[list[Rate]] | None = None  # RM-Bench: chosen style × rejected style


class PairwiseDetail(StrictModel):
    """Pairwise (and best-of-N) extras: the score over all pairs (groups), not macro."""

    micro: Rate
    micro_length_baseline: Rate = None


class RMBenchDetail(StrictModel):
    """RM-Bench extras, pooled over all items."""

    easy: Rate
    normal: Rate
    hard: Rate
    length_baseline: Rate
    length_baseline_levels: dict[str, Rate]
    groups: int
    matrix: list[list[Rate]]


class JudgeBenchDetail(StrictModel):
    """JudgeBench extras: the macro-average over categories, per-source scores, the mapping."""

    macro: Rate
    macro_length_baseline: Rate
    sources: dict[str, SubsetScore]
    mapping: dict[str, str]


class PartScore(StrictModel):
    """One RMB half (best-of-N or pairwise) as a whole."""

    overall: Rate
    length_baseline: Rate
    count: int
    groups: int | None = None  # best-of-N groups
    detail: PairwiseDetail


class CalibrationBin(StrictModel):
    lo: float
    hi: float
    count: int
    mean_p: Rate
    accuracy: Rate


class Calibration(StrictModel):
    """The symmetrised reliability table (``rm/benchmarks.py``): 2 × ``pairs`` orientations."""

    bins: list[CalibrationBin]
    ece: Rate
    pairs: int


# RMB's detail holds its halves by kind ("bon", "pairwise"): those present.
Detail = PairwiseDetail | RMBenchDetail | JudgeBenchDetail | dict[str, PartScore]


class BenchmarkScore(StrictModel):
    """What a scorer returns: the headline, per-subset scores and the format's extras."""

    overall: Rate
    length_baseline: Rate
    count: int
    groups: int | None = None  # best-of-N groups
    subsets: dict[str, SubsetScore]
    detail: Detail


class DtypeComparison(StrictModel):
    """One model scoring the same pairs in two precisions (``synpref eval --compare-dtype``):
    how many pairwise decisions (r_chosen > r_rejected) agree, and how far p moves."""

    device: str
    reference: str  # float32
    other: str  # bfloat16
    pairs: int
    decision_agreement: Rate
    flipped: int
    flipped_near_ties: int  # of the flipped, those with |p_reference − 0.5| < near_tie
    near_tie: float
    flipped_max_margin: float | None  # the largest |p_reference − 0.5| of a flipped decision
    max_abs_dp: float | None
    mean_abs_dp: float | None
    seconds: dict[str, float]  # per precision: load and score


class EvalResult(StrictModel):
    """A reward model on one benchmark: the headline ``overall`` beside its ``length_baseline``,
    ``count`` (pairs scored), per-subset scores, format extras (``detail``: RM-Bench
    easy/normal/hard, RMB bon/pairwise, JudgeBench per source) and calibration. ``model``,
    ``inputs`` and ``ingest`` (counts) are set by :func:`synpref_core.rm.evaluate.evaluate`."""

    format: str
    overall: Rate
    length_baseline: Rate
    count: int
    subsets: dict[str, SubsetScore]
    detail: Detail
    calibration: Calibration
    model: str | None = None
    inputs: list[str] | None = None
    ingest: dict[str, int] | None = None
    dtype_comparison: DtypeComparison | None = None

    def json_dict(self) -> dict[str, Any]:
        """The result as ``eval.json`` holds it: JSON types, no NaN, extras only where set."""
        return self.model_dump(mode="json", exclude_unset=True)
