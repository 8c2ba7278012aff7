"""Evaluate flow: score a reward model on benchmark files (DESIGN §5), one MLflow run.

Run locally on the bundled data (a model directory in plain Hugging Face format is required):

    python -m flows.evaluate --model path/to/rm            # bundled benchmarks, embedded defaults
    python -m flows.evaluate --config evaluate.yaml        # an EvaluateFlowConfig YAML

Each benchmark reports its headline score beside the length baseline (pick the longer response),
per-subset accuracies and a calibration table; results, Markdown tables and calibration plots go
to MLflow under ``eval/<format>/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from synpref_core import tracking
from synpref_core.config import Format, RuntimeConfig, StrictModel, load_config
from synpref_core.rm.eval_results import EvalResult
from synpref_core.rm.model import DEFAULT_BACKBONE
from tasks.evaluate import evaluate_benchmark

DATA = Path(__file__).resolve().parents[1] / "data"


class BenchmarkSpec(StrictModel):
    """One benchmark: its format and its files."""

    format: Format = Field(description="The benchmark's file format.")
    paths: list[str] = Field(min_length=1, description="Files, globs or directories.")


def bundled_benchmarks() -> list[BenchmarkSpec]:
    """The held-out human-labelled sets shipped in data/ (see data/README.md)."""
    return [
        BenchmarkSpec(format="llmbar", paths=[str(DATA / "llmbar" / "Dataset")]),
        BenchmarkSpec(format="pandalm", paths=[str(DATA / "pandalm")]),
        BenchmarkSpec(format="offsetbias", paths=[str(DATA / "offsetbias")]),
    ]


class EvaluateFlowConfig(StrictModel):
    """The model and the benchmarks it is scored on. Defaults are values (not factories), so the
    Prefect form shows them."""

    model: str = Field(DEFAULT_BACKBONE, description="RM directory (HF format) or name.")
    benchmarks: list[BenchmarkSpec] = Field(
        bundled_benchmarks(), min_length=1, description="Default: the bundled benchmarks."
    )
    out: str = Field(".synpref/evaluate", description="Where ingested pairs and results go.")
    max_length: int | None = Field(
        None,
        ge=8,
        description="Tokens per side when scoring; None: what the model was trained with, "
        "else 256.",
    )
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="Executor and MLflow.")


@flow(name="evaluate")
def evaluate_flow(config: EvaluateFlowConfig = EvaluateFlowConfig()) -> dict[str, EvalResult]:  # noqa: B008
    """Score ``config.model`` on every benchmark; returns {format: result}.

    Args:
        config: The model, the benchmarks, where results go and the runtime.
    """
    tags = {
        "flow": "evaluate",
        "model": config.model,
        "prefect_flow_run_id": str(flow_run.id or ""),
    }
    results: dict[str, EvalResult] = {}
    with tracking.start_run(config.runtime.tracking, "evaluate", tags):
        tracking.log_config(config)
        for spec in config.benchmarks:
            out = str(Path(config.out) / spec.format)
            results[spec.format] = evaluate_benchmark(
                config.model, spec.format, spec.paths, out, config.max_length
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="EvaluateFlowConfig YAML")
    parser.add_argument("--model", help="RM directory; overrides the config")
    args = parser.parse_args()
    config = load_config(args.config, EvaluateFlowConfig) if args.config else EvaluateFlowConfig()
    if args.model:
        config = config.model_copy(update={"model": args.model})
    for fmt, result in evaluate_flow(config).items():
        print(
            f"{fmt}: {result.overall:.3f} (length baseline {result.length_baseline:.3f}, "
            f"{result.count} pairs)"
        )


if __name__ == "__main__":
    main()
