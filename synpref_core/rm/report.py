"""Reporting an evaluation: a Markdown table, a calibration plot, and MLflow logging.

:func:`markdown` and :func:`calibration_figure` render an :class:`EvalResult`;
:func:`log_evaluation` puts its flat metrics (:func:`evaluation_metrics`), ``eval.json``, the
Markdown and the plot on an MLflow run. Nothing here scores or reads benchmark files.
"""

from __future__ import annotations

import re
from typing import Any

from synpref_core.config import TrackingConfig
from synpref_core.rm.eval_results import EvalResult


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown(result: EvalResult) -> str:
    """A Markdown report: headline, per-subset table, calibration table."""
    rm_bench = result.format == "rm-bench"
    lines = [
        f"# Evaluation: {result.format}",
        "",
        f"- overall: **{_pct(result.overall)}** "
        f"(length baseline {_pct(result.length_baseline)}), {result.count} pairs",
    ]
    if rm_bench:
        d = result.detail
        lines.append(f"- easy {_pct(d.easy)} · normal {_pct(d.normal)} · hard {_pct(d.hard)}")
    head = "| subset | accuracy | length baseline | pairs |"
    rule = "|---|---:|---:|---:|"
    if rm_bench:
        head += " easy | normal | hard |"
        rule += "---:|---:|---:|"
    lines += ["", head, rule]
    for name, block in result.subsets.items():
        row = f"| {name} | {_pct(block.accuracy)} | {_pct(block.length_baseline)} | {block.count} |"
        if rm_bench:
            row += f" {_pct(block.easy)} | {_pct(block.normal)} | {_pct(block.hard)} |"
        lines.append(row)
    cal = result.calibration
    ece = "–" if cal.ece is None else f"{cal.ece:.3f}"
    lines += [
        "",
        f"Calibration (each pair at p and 1 − p; ECE {ece})",
        "",
        "| p bin | count | mean p | accuracy |",
        "|---|---:|---:|---:|",
    ]
    for b in cal.bins:
        mean_p = "–" if b.mean_p is None else f"{b.mean_p:.3f}"
        acc = "–" if b.accuracy is None else f"{b.accuracy:.3f}"
        lines.append(f"| [{b.lo:.1f}, {b.hi:.1f}) | {b.count} | {mean_p} | {acc} |")
    return "\n".join(lines) + "\n"


def calibration_figure(result: EvalResult) -> Any:
    """A reliability diagram (accuracy vs mean p per bin) over a histogram of counts."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    bins = result.calibration.bins
    fig = Figure(figsize=(5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="calibrated")
    filled = [b for b in bins if b.count]
    top.plot([b.mean_p for b in filled], [b.accuracy for b in filled], marker="o", label="RM")
    top.set_ylabel("observed frequency preferred")
    top.set_title(f"{result.format}: calibration")
    top.legend(loc="upper left")
    width = bins[0].hi - bins[0].lo
    bottom.bar([b.lo for b in bins], [b.count for b in bins], width=width, align="edge")
    bottom.set_xlabel("p = sigmoid(r_a − r_b)")
    bottom.set_ylabel("count")
    fig.tight_layout()
    return fig


def sanitize(name: str) -> str:
    """An MLflow-safe metric name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "_"


def evaluation_metrics(result: EvalResult, prefix: str | None = None) -> dict[str, float]:
    """Flat metrics of a result: ``{prefix}.overall``, ``.length_baseline``, ``.count``,
    ``.subset.<name>`` and ``.subset.<name>.length_baseline`` (plus RM-Bench levels, ECE)."""
    prefix = prefix or f"eval.{sanitize(result.format)}"
    metrics: dict[str, float | None] = {
        f"{prefix}.overall": result.overall,
        f"{prefix}.length_baseline": result.length_baseline,
        f"{prefix}.count": result.count,
        f"{prefix}.ece": result.calibration.ece,
    }
    if result.format == "rm-bench":
        for level in ("easy", "normal", "hard"):
            metrics[f"{prefix}.{level}"] = getattr(result.detail, level)
    for name, block in result.subsets.items():
        metrics[f"{prefix}.subset.{sanitize(name)}"] = block.accuracy
        metrics[f"{prefix}.subset.{sanitize(name)}.length_baseline"] = block.length_baseline
    return {k: float(v) for k, v in metrics.items() if v is not None}


def log_evaluation(
    result: EvalResult,
    run_name: str = "eval",
    tracking_config: TrackingConfig | None = None,
    prefix: str | None = None,
) -> str:
    """Log a result to the active MLflow run, or to a new run ``run_name`` (via
    ``tracking.start_run`` with ``tracking_config``; default: the local SQLite store).

    Metrics from :func:`evaluation_metrics`; artifacts under ``eval/<format>/``: ``eval.json``,
    ``eval.md`` and ``calibration.png``. Returns the run id.
    """
    import mlflow

    from synpref_core.tracking import start_run

    def log(run: Any) -> str:
        folder = f"eval/{sanitize(result.format)}"
        mlflow.log_metrics(evaluation_metrics(result, prefix))
        mlflow.log_dict(result.json_dict(), f"{folder}/eval.json")
        mlflow.log_text(markdown(result), f"{folder}/eval.md")
        mlflow.log_figure(calibration_figure(result), f"{folder}/calibration.png")
        return run.info.run_id

    active = mlflow.active_run()
    if active is not None:
        return log(active)
    with start_run(tracking_config or TrackingConfig(), run_name) as run:
        return log(run)
