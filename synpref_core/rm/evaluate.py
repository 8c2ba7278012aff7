"""Evaluate a reward model on preference benchmarks (DESIGN §5).

Two layers:

- **Scorers** are pure functions over a table of *scored pairs*: one row per pair with the columns
  ``pair_id, source_subset, group_id, meta`` (JSON), ``chosen, rejected`` (texts) and
  ``r_chosen, r_rejected`` (the RM's rewards). :func:`score_results` picks the scorer for a
  benchmark format and returns the result dict; nothing there needs a model.
- :func:`evaluate` ingests benchmark files with the real ingest pipeline (no decontamination),
  scores every pair with the RM, and writes ``OUT/eval.json``; :func:`log_evaluation` puts a
  result on an MLflow run. ``synpref eval`` is the command line.

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
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from synpref_core.rm.scoring import DEFAULT_TOKEN_BUDGET  # padded tokens per forward pass

PAIRWISE_FORMATS: tuple[str, ...] = (
    "pairs",
    "hh-rlhf",
    "pandalm",
    "llmbar",
    "offsetbias",
    "rewardbench",
)
EVAL_FORMATS: tuple[str, ...] = (*PAIRWISE_FORMATS, "rm-bench", "rmb", "judgebench")
NO_SUBSET = "default"
# JudgeBench source prefix → category, first match wins (see the module docstring).
JUDGEBENCH_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("mmlu-pro", "knowledge"),
    ("livebench-reasoning", "reasoning"),
    ("livebench-math", "math"),
    ("livecodebench", "coding"),
)
JUDGEBENCH_OTHER = "other"
RM_BENCH_STYLES: tuple[str, ...] = ("concise", "detailed", "markdown")
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


def _nanmean(values: Sequence[float]) -> float:
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


# ---------------------------------------------------------------------------------------------
# scorers: each returns {"overall", "length_baseline", "count", "subsets", "detail"}


def _pairwise_block(frame: pl.DataFrame) -> dict[str, Any]:
    return {
        "accuracy": _num(_mean(frame.get_column("correct").to_numpy())),
        "length_baseline": _num(_mean(frame.get_column("length_correct").to_numpy())),
        "count": frame.height,
    }


def _by(frame: pl.DataFrame, key: str) -> dict[str, pl.DataFrame]:
    return {
        str(name): part
        for (name,), part in sorted(frame.group_by(key), key=lambda kv: str(kv[0][0]))
    }


def score_pairwise(frame: pl.DataFrame, key: str = "subset") -> dict[str, Any]:
    """Pairwise accuracy per ``key`` value; overall = macro-average over them."""
    subsets = {name: _pairwise_block(part) for name, part in _by(frame, key).items()}
    micro = _pairwise_block(frame)
    return {
        "overall": _num(_nanmean([s["accuracy"] for s in subsets.values()])),
        "length_baseline": _num(_nanmean([s["length_baseline"] for s in subsets.values()])),
        "count": frame.height,
        "subsets": subsets,
        "detail": {"micro": micro["accuracy"], "micro_length_baseline": micro["length_baseline"]},
    }


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


def _rm_bench_block(frame: pl.DataFrame) -> dict[str, Any]:
    model = _difficulties(_grid(frame, "correct"))
    length = _difficulties(_grid(frame, "length_correct"))
    return {
        "accuracy": model["score"],
        "easy": model["easy"],
        "normal": model["normal"],
        "hard": model["hard"],
        "length_baseline": length["score"],
        "length_baseline_levels": {k: length[k] for k in ("easy", "normal", "hard")},
        "count": frame.height,
        "groups": frame.get_column("group_id").n_unique(),
        "matrix": [[_num(v) for v in row] for row in _grid(frame, "correct")],
    }


def score_rm_bench(frame: pl.DataFrame) -> dict[str, Any]:
    """RM-Bench: easy / normal / hard from the 3×3 style grid, pooled and per subset."""
    bad = frame.filter(pl.col("chosen_style").is_null() | pl.col("rejected_style").is_null())
    if bad.height:
        raise EvaluationError(f"{bad.height} RM-Bench pairs lack chosen_style/rejected_style")
    pooled = _rm_bench_block(frame)
    return {
        "overall": pooled["accuracy"],
        "length_baseline": pooled["length_baseline"],
        "count": frame.height,
        "subsets": {name: _rm_bench_block(part) for name, part in _by(frame, "subset").items()},
        "detail": {k: v for k, v in pooled.items() if k not in ("accuracy", "count")},
    }


def _bon_groups(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per best-of-N group: correct only if the best beats every loser strictly."""
    return frame.group_by("group_id").agg(
        pl.col("subset").first(),
        pl.col("correct").all(),
        pl.col("length_correct").all(),
        pl.len().alias("pairs"),
    )


def score_bon(frame: pl.DataFrame) -> dict[str, Any]:
    """Best-of-N accuracy per subset (macro over subsets for overall)."""
    if frame.get_column("group_id").null_count():
        raise EvaluationError("best-of-N pairs need a group_id")
    groups = _bon_groups(frame)
    subsets = {}
    for name, part in _by(groups, "subset").items():
        subsets[name] = {
            "accuracy": _num(_mean(part.get_column("correct").to_numpy())),
            "length_baseline": _num(_mean(part.get_column("length_correct").to_numpy())),
            "count": int(part.get_column("pairs").sum()),
            "groups": part.height,
        }
    return {
        "overall": _num(_nanmean([s["accuracy"] for s in subsets.values()])),
        "length_baseline": _num(_nanmean([s["length_baseline"] for s in subsets.values()])),
        "count": frame.height,
        "groups": groups.height,
        "subsets": subsets,
        "detail": {"micro": _num(_mean(groups.get_column("correct").to_numpy()))},
    }


def score_rmb(frame: pl.DataFrame) -> dict[str, Any]:
    """RMB: best-of-N and pairwise separately; overall = mean of the two present."""
    unknown = frame.filter(~pl.col("kind").is_in(["bon", "pairwise"]) | pl.col("kind").is_null())
    if unknown.height:
        raise EvaluationError(f"{unknown.height} RMB pairs have no meta.kind bon/pairwise")
    parts: dict[str, dict[str, Any]] = {}
    bon = frame.filter(pl.col("kind") == "bon")
    pairwise = frame.filter(pl.col("kind") == "pairwise")
    if bon.height:
        parts["bon"] = score_bon(bon)
    if pairwise.height:
        parts["pairwise"] = score_pairwise(pairwise)
    subsets: dict[str, dict[str, Any]] = {}
    both = set(parts.get("bon", {}).get("subsets", {})) & set(
        parts.get("pairwise", {}).get("subsets", {})
    )
    for kind, part in parts.items():
        for name, block in part["subsets"].items():
            subsets[f"{kind}:{name}" if name in both else name] = {"kind": kind, **block}
    return {
        "overall": _num(_nanmean([p["overall"] for p in parts.values()])),
        "length_baseline": _num(_nanmean([p["length_baseline"] for p in parts.values()])),
        "count": frame.height,
        "subsets": subsets,
        "detail": {
            kind: {k: v for k, v in p.items() if k != "subsets"} for kind, p in parts.items()
        },
    }


def score_judgebench(frame: pl.DataFrame) -> dict[str, Any]:
    """JudgeBench: accuracy per source category; overall over all pairs."""
    frame = frame.with_columns(
        pl.Series("category", [judgebench_category(s) for s in frame.get_column("source_subset")])
    )
    categories = score_pairwise(frame, key="category")
    overall = _pairwise_block(frame)
    return {
        "overall": overall["accuracy"],
        "length_baseline": overall["length_baseline"],
        "count": frame.height,
        "subsets": categories["subsets"],
        "detail": {
            "macro": categories["overall"],
            "macro_length_baseline": categories["length_baseline"],
            "sources": score_pairwise(frame)["subsets"],
            "mapping": {prefix: category for prefix, category in JUDGEBENCH_CATEGORIES},
        },
    }


def calibration(r_chosen: Any, r_rejected: Any, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
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
            {
                "lo": round(b / bins, 10),
                "hi": round((b + 1) / bins, 10),
                "count": count,
                "mean_p": _num(mean_p),
                "accuracy": _num(accuracy),
            }
        )
    return {"bins": table, "ece": _num(ece / p.size) if p.size else None, "pairs": int(diff.size)}


SCORERS = {
    **{fmt: score_pairwise for fmt in PAIRWISE_FORMATS},
    "rm-bench": score_rm_bench,
    "rmb": score_rmb,
    "judgebench": score_judgebench,
}


def score_results(table: pa.Table | pl.DataFrame, fmt: str) -> dict[str, Any]:
    """The evaluation result of scored pairs of benchmark format ``fmt``.

    Keys: ``format``, ``overall`` (the headline), ``length_baseline`` (the same with lengths),
    ``count`` (pairs scored), ``subsets`` (per subset / category: ``accuracy``,
    ``length_baseline``, ``count``, and format extras), ``detail`` (format extras: RM-Bench
    easy/normal/hard, RMB bon/pairwise, JudgeBench per source) and ``calibration``.
    """
    if fmt not in SCORERS:
        raise EvaluationError(f"unknown format {fmt!r}; choose one of {', '.join(EVAL_FORMATS)}")
    frame = _frame(table)
    if frame.height == 0:
        raise EvaluationError("no pairs to evaluate")
    scored = SCORERS[fmt](frame)
    return {
        "format": fmt,
        "overall": scored["overall"],
        "length_baseline": scored["length_baseline"],
        "count": scored["count"],
        "subsets": scored["subsets"],
        "detail": scored["detail"],
        "calibration": calibration(
            frame.get_column("r_chosen").to_numpy(), frame.get_column("r_rejected").to_numpy()
        ),
    }


def _read_pairs(stage_dir: str) -> pa.Table:
    from synpref_core.stages import iter_batches

    columns = [
        "pair_id",
        "conversation",
        "chosen",
        "rejected",
        "source_subset",
        "group_id",
        "meta",
    ]
    batches = list(iter_batches(stage_dir, columns=columns))
    if not batches:
        raise EvaluationError(f"no pairs in {stage_dir}")
    return pa.Table.from_batches(batches)


def ingest_benchmark(fmt: str, paths: Sequence[str], out: str) -> dict[str, int]:
    """Ingest benchmark files into ``out`` (no decontamination); returns the ingest counts."""
    from synpref_core.config import DecontamConfig, ExecutorConfig, IngestConfig, SourceSpec
    from synpref_core.ingest.pipeline import ingest_counts, run_ingest

    config = IngestConfig(
        sources=[SourceSpec(format=fmt, paths=list(paths), decontaminate=False)],
        out=out,
        decontamination=DecontamConfig(benchmarks=[]),
    )
    run_ingest(config, ExecutorConfig(kind="local", workers=1), progress=False)
    return ingest_counts(out)


def score_with_model(
    model_dir: str, pairs: pa.Table, max_length: int, token_budget: int = DEFAULT_TOKEN_BUDGET
) -> pa.Table:
    """``pairs`` less the conversation, plus ``r_chosen`` and ``r_rejected`` from the RM in
    ``model_dir``: what :func:`score_results` takes."""
    from synpref_core.rm.model import load_reward_model
    from synpref_core.rm.scoring import score_table

    model, tokenizer = load_reward_model(model_dir)
    r_chosen, r_rejected = score_table(
        model,
        tokenizer,
        pairs.column("conversation").to_pylist(),
        pairs.column("chosen").to_pylist(),
        pairs.column("rejected").to_pylist(),
        max_length=max_length,
        token_budget=token_budget,
    )
    scored = pairs.drop_columns(["conversation"])
    scored = scored.append_column("r_chosen", pa.array(r_chosen, pa.float64()))
    return scored.append_column("r_rejected", pa.array(r_rejected, pa.float64()))


def evaluate(
    model_dir: str | Path,
    fmt: str,
    paths: Sequence[str],
    out_dir: str | Path,
    max_length: int = 256,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
) -> dict[str, Any]:
    """Ingest ``paths`` as ``fmt``, score every pair with the RM in ``model_dir``, and write
    ``out_dir/eval.json`` (the result) and ``out_dir/scores.parquet`` (per-pair rewards).

    Raises EvaluationError for an unknown format, and the ingest errors
    (``MalformedInputError``, ``StageError``) for missing or malformed files.
    """
    if fmt not in SCORERS:
        raise EvaluationError(f"unknown format {fmt!r}; choose one of {', '.join(EVAL_FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = ingest_benchmark(fmt, paths, str(out / "pairs"))
    pairs = _read_pairs(str(out / "pairs"))
    scored = score_with_model(str(model_dir), pairs, max_length, token_budget)
    result = score_results(scored, fmt)
    result["model"] = str(model_dir)
    result["inputs"] = [str(p) for p in paths]
    result["ingest"] = counts
    import pyarrow.parquet as pq

    pq.write_table(scored, out / "scores.parquet")
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# ---------------------------------------------------------------------------------------------
# reporting


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """A Markdown report: headline, per-subset table, calibration table."""
    rm_bench = result["format"] == "rm-bench"
    lines = [
        f"# Evaluation: {result['format']}",
        "",
        f"- overall: **{_pct(result['overall'])}** "
        f"(length baseline {_pct(result['length_baseline'])}), {result['count']} pairs",
    ]
    if rm_bench:
        d = result["detail"]
        lines.append(
            f"- easy {_pct(d['easy'])} · normal {_pct(d['normal'])} · hard {_pct(d['hard'])}"
        )
    head = "| subset | accuracy | length baseline | pairs |"
    rule = "|---|---:|---:|---:|"
    if rm_bench:
        head += " easy | normal | hard |"
        rule += "---:|---:|---:|"
    lines += ["", head, rule]
    for name, block in result["subsets"].items():
        row = (
            f"| {name} | {_pct(block['accuracy'])} | {_pct(block['length_baseline'])} "
            f"| {block['count']} |"
        )
        if rm_bench:
            row += f" {_pct(block['easy'])} | {_pct(block['normal'])} | {_pct(block['hard'])} |"
        lines.append(row)
    cal = result["calibration"]
    ece = "–" if cal["ece"] is None else f"{cal['ece']:.3f}"
    lines += [
        "",
        f"Calibration (each pair at p and 1 − p; ECE {ece})",
        "",
        "| p bin | count | mean p | accuracy |",
        "|---|---:|---:|---:|",
    ]
    for b in cal["bins"]:
        mean_p = "–" if b["mean_p"] is None else f"{b['mean_p']:.3f}"
        acc = "–" if b["accuracy"] is None else f"{b['accuracy']:.3f}"
        lines.append(f"| [{b['lo']:.1f}, {b['hi']:.1f}) | {b['count']} | {mean_p} | {acc} |")
    return "\n".join(lines) + "\n"


def calibration_figure(result: dict[str, Any]) -> Any:
    """A reliability diagram (accuracy vs mean p per bin) over a histogram of counts."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    bins = result["calibration"]["bins"]
    fig = Figure(figsize=(5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="calibrated")
    filled = [b for b in bins if b["count"]]
    top.plot([b["mean_p"] for b in filled], [b["accuracy"] for b in filled], marker="o", label="RM")
    top.set_ylabel("observed frequency preferred")
    top.set_title(f"{result['format']}: calibration")
    top.legend(loc="upper left")
    width = bins[0]["hi"] - bins[0]["lo"]
    bottom.bar([b["lo"] for b in bins], [b["count"] for b in bins], width=width, align="edge")
    bottom.set_xlabel("p = sigmoid(r_a − r_b)")
    bottom.set_ylabel("count")
    fig.tight_layout()
    return fig


def sanitize(name: str) -> str:
    """An MLflow-safe metric name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "_"


def evaluation_metrics(result: dict[str, Any], prefix: str | None = None) -> dict[str, float]:
    """Flat metrics of a result: ``{prefix}.overall``, ``.length_baseline``, ``.count``,
    ``.subset.<name>`` and ``.subset.<name>.length_baseline`` (plus RM-Bench levels, ECE)."""
    prefix = prefix or f"eval.{sanitize(result['format'])}"
    metrics: dict[str, float | None] = {
        f"{prefix}.overall": result["overall"],
        f"{prefix}.length_baseline": result["length_baseline"],
        f"{prefix}.count": result["count"],
        f"{prefix}.ece": result["calibration"]["ece"],
    }
    if result["format"] == "rm-bench":
        for level in ("easy", "normal", "hard"):
            metrics[f"{prefix}.{level}"] = result["detail"][level]
    for name, block in result["subsets"].items():
        metrics[f"{prefix}.subset.{sanitize(name)}"] = block["accuracy"]
        metrics[f"{prefix}.subset.{sanitize(name)}.length_baseline"] = block["length_baseline"]
    return {k: float(v) for k, v in metrics.items() if v is not None}


def log_evaluation(
    result: dict[str, Any],
    run_name: str = "eval",
    tracking: Any = None,
    prefix: str | None = None,
) -> str:
    """Log a result to the active MLflow run, or to a new run ``run_name`` (via
    ``tracking.start_run`` with ``tracking``, a TrackingConfig; default: the local SQLite store).

    Metrics from :func:`evaluation_metrics`; artifacts under ``eval/<format>/``: ``eval.json``,
    ``eval.md`` and ``calibration.png``. Returns the run id.
    """
    import mlflow

    from synpref_core.config import TrackingConfig
    from synpref_core.tracking import start_run

    def log(run: Any) -> str:
        folder = f"eval/{sanitize(result['format'])}"
        mlflow.log_metrics(evaluation_metrics(result, prefix))
        mlflow.log_dict(result, f"{folder}/eval.json")
        mlflow.log_text(markdown(result), f"{folder}/eval.md")
        mlflow.log_figure(calibration_figure(result), f"{folder}/calibration.png")
        return run.info.run_id

    active = mlflow.active_run()
    if active is not None:
        return log(active)
    with start_run(tracking or TrackingConfig(), run_name) as run:
        return log(run)
