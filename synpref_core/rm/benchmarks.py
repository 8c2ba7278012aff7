"""Benchmark scorers: how well reward-model scores pick the chosen response (DESIGN §5).

The scorers are pure functions over a table of *scored pairs*: one row per pair with the columns
``pair_id, source_subset, group_id, meta`` (JSON), ``chosen, rejected`` (texts) and
``r_chosen, r_rejected`` (the RM's rewards). :func:`score_results` picks the scorer for a
benchmark format and returns an :class:`EvalResult`; nothing here needs a model
(``rm/evaluate.py`` produces the rewards, ``rm/report.py`` renders and logs results).

Scoring rules (a pair is *correct* when ``r_chosen > r_rejected``; a **tie counts as wrong**, and
so does a NaN reward):

- **pairwise** formats (``pairs, hh-rlhf, pandalm, llmbar, offsetbias, rewardbench``): accuracy
  per subset; ``overall`` is the macro-average over subsets (``micro`` is over all pairs).
  Pairs without a subset are the subset ``"default"``.
- **rm-bench**: every item (``group_id``) is a 3×3 grid, chosen style i × rejected style j
  (0 concise, 1 detailed plain, 2 detailed markdown; from ``meta``). Each cell's accuracy is the
  mean over the items that have that cell; *hard* is the mean of the upper triangle (i < j: the
  chosen is less formatted than the rejected), *normal* of the diagonal, *easy* of the lower
  triangle; the score is the mean of easy, normal and hard, pooled over all items for ``overall``
  and per subset (domain) in ``subsets``.
- **rmb**: best-of-N rows (``meta.kind == "bon"``) are grouped by ``group_id``; a group is correct
  when the best answer scores strictly above *every* loser (a loser tying the best fails it).
  Pairwise rows are scored as above. BoN and pairwise are reported separately (``detail``), each
  macro-averaged over its subsets; ``overall`` is the mean of the two (of those present).
- **judgebench**: accuracy per source category; ``overall`` is accuracy over all pairs (as
  JudgeBench reports it). The category of a ``source`` (case-insensitive prefix, first match):

  ======================== ===========
  ``mmlu-pro*``             knowledge   (all MMLU-Pro subjects, ``mmlu-pro-math`` included)
  ``livebench-reasoning*``  reasoning
  ``livebench-math*``       math
  ``livecodebench*``        coding
  anything else             other
  ======================== ===========

Beside every score sits the **length baseline**: the same score with each response's length in
characters as its reward (so "pick the longer response"; equal lengths count as wrong), and the
number of pairs scored (``count``; ``groups`` for grouped formats).

**Calibration**: with p = sigmoid(r_chosen − r_rejected), a pair says "chosen is preferred with
probability p" and, read the other way round, "rejected is preferred with probability 1 − p".
Binning only p against "chosen won" would be degenerate (every pair with p > 0.5 is correct by
definition), so each pair enters the table twice: at p with outcome 1 and at 1 − p with outcome 0.
The table has 10 equal bins over [0, 1] with, per bin, ``count`` (pair orientations; the counts
sum to 2 × pairs), ``mean_p`` and ``accuracy`` (the observed frequency that the response read at
that probability is the preferred one); a calibrated RM has accuracy ≈ mean_p. ``ece`` is the
count-weighted mean |accuracy − mean_p|.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from synpref_core.rm.eval_results import (
    EVAL_FORMATS,
    PAIRWISE_FORMATS,
    BenchmarkScore,
    Calibration,
    CalibrationBin,
    EvalResult,
    JudgeBenchDetail,
    PairwiseDetail,
    PartScore,
    RMBenchDetail,
    SubsetScore,
)

NO_SUBSET = "default"
# JudgeBench source prefix → category, first match wins (see the module docstring).
JUDGEBENCH_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("mmlu-pro", "knowledge"),
    ("livebench-reasoning", "reasoning"),
    ("livebench-math", "math"),
    ("livecodebench", "coding"),
)
JUDGEBENCH_OTHER = "other"
CALIBRATION_BINS = 10
SCORED_COLUMNS: tuple[str, ...] = (
    "pair_id",
    "source_subset",
    "group_id",
    "meta",
    "chosen",
    "rejected",
    "r_chosen",
    "r_rejected",
)


class EvaluationError(ValueError):
    """The inputs cannot be evaluated (unknown format, missing columns, no pairs)."""


# ---------------------------------------------------------------------------------------------
# small helpers


def _num(value: Any) -> float | None:
    """A JSON-safe float: None for NaN (an empty subset has no score)."""
    value = float(value)
    return None if math.isnan(value) else value


def _mean(values: Any) -> float:
    array = np.asarray(values, dtype=float)
    return float(array.mean()) if array.size else math.nan


def _nanmean(values: Sequence[float | None]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def correct(r_chosen: Any, r_rejected: Any) -> np.ndarray:
    """Per pair: chosen strictly above rejected. Ties and NaNs are wrong."""
    r_chosen = np.asarray(r_chosen, dtype=float)
    r_rejected = np.asarray(r_rejected, dtype=float)
    with np.errstate(invalid="ignore"):
        return r_chosen > r_rejected


def judgebench_category(source: str | None) -> str:
    """The JudgeBench category of a ``source`` (see the module docstring for the mapping)."""
    text = (source or "").strip().lower()
    for prefix, category in JUDGEBENCH_CATEGORIES:
        if text.startswith(prefix):
            return category
    return JUDGEBENCH_OTHER


def _frame(table: pa.Table | pl.DataFrame) -> pl.DataFrame:
    """The scored pairs as polars, with lengths, correctness and parsed style/kind columns."""
    frame = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    missing = [c for c in SCORED_COLUMNS if c not in frame.columns]
    if missing:
        raise EvaluationError(f"scored pairs lack columns {missing}")
    metas = [json.loads(m) if m else {} for m in frame.get_column("meta").to_list()]
    r_c = frame.get_column("r_chosen").cast(pl.Float64).to_numpy()
    r_r = frame.get_column("r_rejected").cast(pl.Float64).to_numpy()
    len_c = frame.get_column("chosen").str.len_chars().to_numpy()
    len_r = frame.get_column("rejected").str.len_chars().to_numpy()
    return frame.with_columns(
        pl.col("source_subset").fill_null(NO_SUBSET).alias("subset"),
        pl.Series("correct", correct(r_c, r_r)),
        pl.Series("length_correct", len_c > len_r),
        pl.Series("kind", [m.get("kind") for m in metas], dtype=pl.String),
        pl.Series("chosen_style", [m.get("chosen_style") for m in metas], dtype=pl.Int64),
        pl.Series("rejected_style", [m.get("rejected_style") for m in metas], dtype=pl.Int64),
    )


def _by(frame: pl.DataFrame, key: str) -> dict[str, pl.DataFrame]:
    return {
        str(name): part
        for (name,), part in sorted(frame.group_by(key), key=lambda kv: str(kv[0][0]))
    }


def _macro(subsets: dict[str, SubsetScore]) -> tuple[float | None, float | None]:
    """(accuracy, length baseline), each averaged over the subsets."""
    return (
        _num(_nanmean([s.accuracy for s in subsets.values()])),
        _num(_nanmean([s.length_baseline for s in subsets.values()])),
    )


# ---------------------------------------------------------------------------------------------
# scorers


def _pairwise_block(frame: pl.DataFrame) -> SubsetScore:
    return SubsetScore(
        accuracy=_num(_mean(frame.get_column("correct").to_numpy())),
        length_baseline=_num(_mean(frame.get_column("length_correct").to_numpy())),
        count=frame.height,
    )


def score_pairwise(frame: pl.DataFrame, key: str = "subset") -> BenchmarkScore:
    """Pairwise accuracy per ``key`` value; overall = macro-average over them."""
    subsets = {name: _pairwise_block(part) for name, part in _by(frame, key).items()}
    micro = _pairwise_block(frame)
    overall, length_baseline = _macro(subsets)
    return BenchmarkScore(
        overall=overall,
        length_baseline=length_baseline,
        count=frame.height,
        subsets=subsets,
        detail=PairwiseDetail(micro=micro.accuracy, micro_length_baseline=micro.length_baseline),
    )


def _grid(frame: pl.DataFrame, column: str) -> np.ndarray:
    """3×3 matrix of mean correctness per (chosen style, rejected style); NaN for empty cells."""
    matrix = np.full((3, 3), math.nan)
    cells = frame.group_by("chosen_style", "rejected_style").agg(pl.col(column).mean())
    for i, j, value in cells.iter_rows():
        if i is not None and j is not None and 0 <= i < 3 and 0 <= j < 3:
            matrix[i, j] = value
    return matrix


def _difficulties(matrix: np.ndarray) -> dict[str, float | None]:
    upper = [matrix[i, j] for i in range(3) for j in range(3) if i < j]
    lower = [matrix[i, j] for i in range(3) for j in range(3) if i > j]
    levels = {
        "easy": _nanmean(lower),
        "normal": _nanmean(list(np.diag(matrix))),
        "hard": _nanmean(upper),
    }
    return {
        "score": _num(_nanmean(list(levels.values()))),
        **{k: _num(v) for k, v in levels.items()},
    }


def _rm_bench_block(frame: pl.DataFrame) -> SubsetScore:
    model = _difficulties(_grid(frame, "correct"))
    length = _difficulties(_grid(frame, "length_correct"))
    return SubsetScore(
        accuracy=model["score"],
        easy=model["easy"],
        normal=model["normal"],
        hard=model["hard"],
        length_baseline=length["score"],
        length_baseline_levels={k: length[k] for k in ("easy", "normal", "hard")},
        count=frame.height,
        groups=frame.get_column("group_id").n_unique(),
        matrix=[[_num(v) for v in row] for row in _grid(frame, "correct")],
    )


def score_rm_bench(frame: pl.DataFrame) -> BenchmarkScore:
    """RM-Bench: easy / normal / hard from the 3×3 style grid, pooled and per subset."""
    bad = frame.filter(pl.col("chosen_style").is_null() | pl.col("rejected_style").is_null())
    if bad.height:
        raise EvaluationError(f"{bad.height} RM-Bench pairs lack chosen_style/rejected_style")
    pooled = _rm_bench_block(frame)
    return BenchmarkScore(
        overall=pooled.accuracy,
        length_baseline=pooled.length_baseline,
        count=frame.height,
        subsets={name: _rm_bench_block(part) for name, part in _by(frame, "subset").items()},
        detail=RMBenchDetail(**pooled.model_dump(exclude={"accuracy", "count", "kind"})),
    )


def _bon_groups(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per best-of-N group: correct only if the best beats every loser strictly."""
    return frame.group_by("group_id").agg(
        pl.col("subset").first(),
        pl.col("correct").all(),
        pl.col("length_correct").all(),
        pl.len().alias("pairs"),
    )


def score_bon(frame: pl.DataFrame) -> BenchmarkScore:
    """Best-of-N accuracy per subset (macro over subsets for overall)."""
    if frame.get_column("group_id").null_count():
        raise EvaluationError("best-of-N pairs need a group_id")
    groups = _bon_groups(frame)
    subsets = {
        name: SubsetScore(
            accuracy=_num(_mean(part.get_column("correct").to_numpy())),
            length_baseline=_num(_mean(part.get_column("length_correct").to_numpy())),
            count=int(part.get_column("pairs").sum()),
            groups=part.height,
        )
        for name, part in _by(groups, "subset").items()
    }
    overall, length_baseline = _macro(subsets)
    return BenchmarkScore(
        overall=overall,
        length_baseline=length_baseline,
        count=frame.height,
        groups=groups.height,
        subsets=subsets,
        detail=PairwiseDetail(micro=_num(_mean(groups.get_column("correct").to_numpy()))),
    )


def score_rmb(frame: pl.DataFrame) -> BenchmarkScore:
    """RMB: best-of-N and pairwise separately; overall = mean of the two present."""
    unknown = frame.filter(~pl.col("kind").is_in(["bon", "pairwise"]) | pl.col("kind").is_null())
    if unknown.height:
        raise EvaluationError(f"{unknown.height} RMB pairs have no meta.kind bon/pairwise")
    scorers = {"bon": score_bon, "pairwise": score_pairwise}
    parts = {
        kind: scorer(part)
        for kind, scorer in scorers.items()
        if (part := frame.filter(pl.col("kind") == kind)).height
    }
    return BenchmarkScore(
        overall=_num(_nanmean([p.overall for p in parts.values()])),
        length_baseline=_num(_nanmean([p.length_baseline for p in parts.values()])),
        count=frame.height,
        subsets=_rmb_subsets(parts),
        detail={
            kind: PartScore(**p.model_dump(exclude={"subsets"}, exclude_unset=True))
            for kind, p in parts.items()
        },
    )


def _rmb_subsets(parts: dict[str, BenchmarkScore]) -> dict[str, SubsetScore]:
    """Both halves' subsets, each marked with its kind; a name in both gets a kind prefix."""
    names = [set(p.subsets) for p in parts.values()]
    both = set.intersection(*names) if len(names) == 2 else set()
    return {
        f"{kind}:{name}" if name in both else name: block.model_copy(update={"kind": kind})
        for kind, part in parts.items()
        for name, block in part.subsets.items()
    }


def score_judgebench(frame: pl.DataFrame) -> BenchmarkScore:
    """JudgeBench: accuracy per source category; overall over all pairs."""
    frame = frame.with_columns(
        pl.Series("category", [judgebench_category(s) for s in frame.get_column("source_subset")])
    )
    categories = score_pairwise(frame, key="category")
    overall = _pairwise_block(frame)
    return BenchmarkScore(
        overall=overall.accuracy,
        length_baseline=overall.length_baseline,
        count=frame.height,
        subsets=categories.subsets,
        detail=JudgeBenchDetail(
            macro=categories.overall,
            macro_length_baseline=categories.length_baseline,
            sources=score_pairwise(frame).subsets,
            mapping={prefix: category for prefix, category in JUDGEBENCH_CATEGORIES},
        ),
    )


def calibration(r_chosen: Any, r_rejected: Any, bins: int = CALIBRATION_BINS) -> Calibration:
    """The symmetrised reliability table of p = sigmoid(r_chosen − r_rejected) (module doc)."""
    r_chosen = np.asarray(r_chosen, dtype=float)
    r_rejected = np.asarray(r_rejected, dtype=float)
    diff = r_chosen - r_rejected
    diff = diff[~np.isnan(diff)]
    p_chosen = 0.5 * (1.0 + np.tanh(diff / 2.0))  # sigmoid, stable for large |diff|
    p_rejected = 0.5 * (1.0 - np.tanh(diff / 2.0))
    p = np.concatenate([p_chosen, p_rejected])
    outcome = np.concatenate([np.ones_like(p_chosen), np.zeros_like(p_rejected)])
    index = np.clip(np.floor(p * bins).astype(int), 0, bins - 1)
    table = []
    ece = 0.0
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        mean_p = _mean(p[mask])
        accuracy = _mean(outcome[mask])
        if count:
            ece += count * abs(accuracy - mean_p)
        table.append(
            CalibrationBin(
                lo=round(b / bins, 10),
                hi=round((b + 1) / bins, 10),
                count=count,
                mean_p=_num(mean_p),
                accuracy=_num(accuracy),
            )
        )
    ece_or_none = _num(ece / p.size) if p.size else None
    return Calibration(bins=table, ece=ece_or_none, pairs=int(diff.size))


SCORERS: dict[str, Callable[[pl.DataFrame], BenchmarkScore]] = {
    **{fmt: score_pairwise for fmt in PAIRWISE_FORMATS},
    "rm-bench": score_rm_bench,
    "rmb": score_rmb,
    "judgebench": score_judgebench,
}


def check_format(fmt: str) -> None:
    """Raise EvaluationError unless ``fmt`` is one of EVAL_FORMATS."""
    if fmt not in SCORERS:
        raise EvaluationError(f"unknown format {fmt!r}; choose one of {', '.join(EVAL_FORMATS)}")


def score_results(table: pa.Table | pl.DataFrame, fmt: str) -> EvalResult:
    """The evaluation result of scored pairs of benchmark format ``fmt`` (see EvalResult)."""
    check_format(fmt)
    frame = _frame(table)
    if frame.height == 0:
        raise EvaluationError("no pairs to evaluate")
    scored = SCORERS[fmt](frame)
    return EvalResult(
        format=fmt,
        overall=scored.overall,
        length_baseline=scored.length_baseline,
        count=scored.count,
        subsets=scored.subsets,
        detail=scored.detail,
        calibration=calibration(
            frame.get_column("r_chosen").to_numpy(), frame.get_column("r_rejected").to_numpy()
        ),
    )
