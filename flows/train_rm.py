"""train_rm flow: select training and gold pairs, train a Bradley-Terry reward model, register it.

Run locally on embedded defaults (local Ray, DeepSpeed on CPU, MLflow on SQLite, bundled data):

    python -m flows.train_rm                    # or: make flow-train-rm
    python -m flows.train_rm --config rm.yaml   # a TrainRMFlowConfig YAML

The defaults ingest the bundled datasets (skipped when already done), train MiniLM-L6 with the
``cpu`` profile on 80% of hh-rlhf harmless (a hash split of pair ids), keep the checkpoint with
the best accuracy on the other 20% (the gold split), register it in MLflow as ``synpref-rm`` and
score it on the bundled human-labelled benchmarks (LLMBar, PandaLM, OffsetBias). One MLflow run
holds the config, both selection manifests, the loss and gold-accuracy curves, the model
(a registered version whose tags name the training manifest) and the benchmark results.

At scale: ``pairs`` points at an ingested stage on S3, ``runtime.executor.ray_address`` at the Ray
cluster, and ``training`` sets ``use_gpu: true``, ``workers`` and a DeepSpeed preset from
``infra/deepspeed/`` (``paper-8b.json`` is the paper's setting).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from flows.evaluate import BenchmarkSpec, bundled_benchmarks
from flows.ingest import bundled_ingest_config
from synpref_core import tracking
from synpref_core.config import IngestConfig, RuntimeConfig, StrictModel, load_config
from synpref_core.curation.select import PairFilter, SelectConfig
from synpref_core.io.lock import output_lock
from synpref_core.rm.train import MODEL_NAME, TrainConfig, resolve_profile
from tasks.evaluate import evaluate_benchmark
from tasks.ingest import dedup, normalize
from tasks.select import select_pairs
from tasks.tracking import record_manifest
from tasks.train import register_rm, train_rm

BUNDLED_POOL = "hh-rlhf-harmless"


class TrainRMFlowConfig(StrictModel):
    """Select, train, register, evaluate. Defaults are values (not factories), so the Prefect
    form shows them."""

    pairs: str | None = Field(
        None, description="Ingested pair stage to select from; None: ingest `ingest` first."
    )
    ingest: IngestConfig = Field(
        bundled_ingest_config(), description="Used only when `pairs` is None (default: bundled)."
    )
    train_on: PairFilter = Field(
        PairFilter(sources=[BUNDLED_POOL], split=(0.0, 0.8)),
        description="The training pairs (D_silver in Stage 1).",
    )
    gold_on: PairFilter | None = Field(
        PairFilter(sources=[BUNDLED_POOL], split=(0.8, 1.0)),
        description="Pairs that pick the best checkpoint (D_gold); None: keep the last one.",
    )
    training: TrainConfig = Field(
        TrainConfig(),
        description="Model and optimisation; its manifests and `out` are set by the flow.",
    )
    out: str = Field(".synpref/train_rm", description="Selections, checkpoints and results.")
    model_name: str = Field(MODEL_NAME, description="MLflow registered-model name.")
    benchmarks: list[BenchmarkSpec] = Field(
        bundled_benchmarks(), description="Scored after training; [] for none."
    )
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="Executor and MLflow.")


@flow(name="train_rm")
def train_rm_flow(config: TrainRMFlowConfig = TrainRMFlowConfig()) -> dict[str, Any]:  # noqa: B008
    """Select, train, register, evaluate; returns the model dir, its version and the scores.

    Args:
        config: The pairs (or what to ingest), the train and gold selections, the training run,
            the benchmarks scored afterwards and the runtime.
    """
    executor, out = config.runtime.executor, Path(config.out)
    tags = {"flow": "train_rm", "prefect_flow_run_id": str(flow_run.id or "")}
    with tracking.start_run(config.runtime.tracking, "train_rm", tags):
        tracking.log_config(config)
        pairs = config.pairs
        if pairs is None:
            with output_lock(config.ingest.out):  # no other run between the two stages
                pairs = dedup(config.ingest, executor, normalize(config.ingest, executor))
        selections = {"train": config.train_on, "gold": config.gold_on}
        manifests: dict[str, str | None] = {}
        for role, where in selections.items():
            manifests[role] = None
            if where is not None:
                spec = SelectConfig(input=pairs, out=str(out / role), **where.model_dump())
                manifests[role] = select_pairs(spec, executor)
                record_manifest(manifests[role], prefix=f"{role}.")
        training = config.training.model_copy(
            update={
                "train_manifest": manifests["train"],
                "gold_manifest": manifests["gold"],
                "out": str(out / "rm"),
            }
        )
        result = train_rm(training, executor)
        version = register_rm(result, training, config.runtime.tracking, config.model_name)
        scores = {
            spec.format: evaluate_benchmark(
                result.best_dir,
                spec.format,
                spec.paths,
                str(out / "eval" / spec.format),
                resolve_profile(training).max_length,
            )
            for spec in config.benchmarks
        }
    return {
        "model_dir": result.best_dir,
        "version": version,
        "best_gold_accuracy": result.best_gold_accuracy,
        "best_step": result.best_step,
        "steps": result.steps,
        "benchmarks": scores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="TrainRMFlowConfig YAML (default: embedded)")
    args = parser.parse_args()
    config = load_config(args.config, TrainRMFlowConfig) if args.config else TrainRMFlowConfig()
    summary = train_rm_flow(config)
    print(f"model: {summary['model_dir']} (registered version {summary['version']})")
    print(f"best gold accuracy: {summary['best_gold_accuracy']} at step {summary['best_step']}")
    for fmt, result in summary["benchmarks"].items():
        print(
            f"{fmt}: {result.overall:.3f} (length baseline {result.length_baseline:.3f}, "
            f"{result.count} pairs)"
        )


if __name__ == "__main__":
    main()
