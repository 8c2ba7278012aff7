"""Prefect task shell of the evaluation harness: score one benchmark, log it, return the result."""

from __future__ import annotations

from prefect import task

from synpref_core.rm.eval_results import EvalResult
from synpref_core.rm.evaluate import evaluate
from synpref_core.rm.report import log_evaluation


@task(name="evaluate-benchmark")
def evaluate_benchmark(
    model: str, fmt: str, paths: list[str], out: str, max_length: int | None
) -> EvalResult:
    """Ingest and score one benchmark; log metrics and artifacts to the active MLflow run."""
    result = evaluate(model, fmt, paths, out, max_length=max_length)
    log_evaluation(result, prefix=fmt)
    return result
