"""demo flow: the whole pipeline on the bundled real data, on a laptop (``make demo``).

    python -m flows.demo                      # or: make demo
    python -m flows.demo --config demo.yaml   # a DemoFlowConfig YAML

Steps, each printed as it starts and ends:

1. **ingest** the bundled sets (hh-rlhf harmless as the pool, PandaLM + LLMBar as gold);
2. **Stage 1**, ``stage1.rounds`` rounds (default 2) over half of hh-rlhf: train → score gold →
   adaptive retrieval → attributes → judging by the local judge (the round's RM, a stand-in) →
   human verification by the **replay** of the crowd's recorded hh-rlhf labels through the
   verification app's HTTP API → new D_gold / D_silver;
3. a **gold RM** trained only on the human-verified pairs (Stage 1's final D_gold);
4. **Stage 2** over the other half of hh-rlhf with ``noise`` of its pairs' sides swapped first
   (the audit): dual-RM consistency filter, the doubted pairs judged by the best and gold RMs;
5. **comparison**: an RM trained on Stage 2's curated pairs and one trained on as many pairs of
   the same noisy half as they come, same backbone and budget, both scored on the held-out gold
   pairs no round ever saw (accuracy with a 95% bootstrap interval), beside Stage 1's final RM;
6. **evaluation** of Stage 1's final RM on benchmarks outside every set (LLMBar's processed
   sets and OffsetBias) beside the length baseline;
7. the **report**: ``<out>/report.html`` and ``report.md`` from ``<out>/demo.json``, logged to
   the demo's MLflow run.

Every step is a flow or task of its own; a re-run skips what is done (stage identities, round
records). Wall time per step goes into demo.json and the report.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field, model_validator

from flows.ingest import DATA, bundled_ingest_config
from flows.stage1 import BUNDLED_POOL, Stage1FlowConfig, stage1_flow
from flows.stage2 import Stage2FlowConfig, stage2_flow
from synpref_core import tracking
from synpref_core.config import ConfigError, IngestConfig, RuntimeConfig, StrictModel, load_config
from synpref_core.curation.select import PairFilter, SelectConfig
from synpref_core.curation.stage1 import heldout_accuracy, length_baseline
from synpref_core.io.lock import output_lock
from synpref_core.report import log_report, render_report, write_report
from synpref_core.retrieval.store import StoreConfig
from synpref_core.rm.registry import ModelNotFoundError
from synpref_core.rm.scoring import ScoreConfig
from synpref_core.rm.train import TrainConfig, resolve_profile
from synpref_core.run_summary import DemoSummary, StepTime, load_summary, write_json
from synpref_core.stages import StageError, load_manifest
from tasks.curate import score_pairs
from tasks.evaluate import evaluate_benchmark
from tasks.ingest import dedup, normalize
from tasks.select import select_pairs
from tasks.train import register_rm, train_rm

OUT = ".synpref/demo"


def _stage1_default() -> Stage1FlowConfig:
    from flows.stage1 import HumanStep

    return Stage1FlowConfig(
        store=StoreConfig(uri=f"{OUT}/vectors"),
        human=HumanStep(wait="replay", db_url=f"sqlite:///{OUT}/human.db"),
        out=f"{OUT}/stage1",
    )


class DemoFlowConfig(StrictModel):
    """The whole pipeline. Every default is a value, so the Prefect UI shows it."""

    ingest: IngestConfig = Field(bundled_ingest_config(), description="The bundled sets.")
    stage1: Stage1FlowConfig = Field(_stage1_default(), description="Stage 1 (pairs: ingest).")
    wild_on: PairFilter = Field(
        PairFilter(sources=[BUNDLED_POOL], statuses=["unverified"], split=(0.5, 1.0)),
        description="Stage 2's D_wild: the half of hh-rlhf Stage 1 did not search.",
    )
    noise: float = Field(0.2, gt=0, lt=1, description="Share of D_wild swapped first (audit).")
    training: TrainConfig = Field(
        TrainConfig(max_steps=60, eval_every=20),
        description="The gold RM and the two compared RMs (same backbone and budget).",
    )
    benchmarks: dict[str, list[str]] = Field(
        {
            "llmbar": [str(DATA / "llmbar" / "Dataset" / "Processed")],
            "offsetbias": [str(DATA / "offsetbias")],
        },
        description="Final evaluation: sets outside every gold and pool set.",
    )
    seed: int = Field(0, ge=0, description="Seeds the uncurated sample and the bootstraps.")
    out: str = Field(OUT, description="Everything the demo writes, demo.json and the report.")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="Executor and MLflow.")

    @model_validator(mode="after")
    def _has_held_out_pairs(self) -> DemoFlowConfig:
        if self.stage1.holdout == 0:
            raise ValueError("stage1.holdout = 0 leaves no held-out pairs to compare RMs on")
        return self


class Steps:
    """Times each step and prints it (a person follows the run from the console)."""

    def __init__(self, total: int):
        self.total, self.done, self.times = total, 0, []

    @contextmanager
    def step(self, name: str, note: str = ""):
        logger = get_run_logger()
        self.done += 1
        logger.info("[%d/%d] %s ...", self.done, self.total, name)
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.times.append(StepTime(step=name, seconds=round(seconds, 1), note=note))
        logger.info("[%d/%d] %s done in %.0f s", self.done, self.total, name, seconds)


@flow(name="demo")
def demo_flow(config: DemoFlowConfig = DemoFlowConfig()) -> dict[str, Any]:  # noqa: B008
    """Ingest, Stage 1, gold RM, Stage 2 with an audit, comparison, evaluation, report.

    Args:
        config: The bundled inputs, Stage 1, Stage 2's half and noise, the training budget.
    """
    executor, out = config.runtime.executor, Path(config.out)
    steps = Steps(total=7)
    runtime = {"runtime": config.runtime}
    with steps.step("ingest the bundled datasets"), output_lock(config.ingest.out):
        pairs = dedup(config.ingest, executor, normalize(config.ingest, executor))
    with steps.step(f"Stage 1: {config.stage1.rounds} rounds"):
        stage1 = config.stage1.model_copy(update={"pairs": pairs, **runtime})
        result1 = stage1_flow(stage1)
        summary1 = load_summary(result1["summary"])
    gold = summary1.gold
    tags = {"flow": "demo", "prefect_flow_run_id": str(flow_run.id or "")}
    with steps.step("gold RM on the human-verified pairs"):
        gold_rm = _train(config, "gold-rm", gold, "synpref-demo-gold-rm")
    with steps.step(f"Stage 2 over the other half of hh-rlhf, {config.noise:.0%} of it swapped"):
        wild = select_pairs(
            SelectConfig(input=pairs, out=str(out / "wild"), **config.wild_on.model_dump()),
            executor,
        )
        stage2 = Stage2FlowConfig(
            wild=wild, best_rm=summary1.best_rm, gold_rm=gold_rm, audit_noise=config.noise,
            audit_seed=config.seed, store=config.stage1.store, panel=config.stage1.panel,
            few_shot=config.stage1.retrieval, out=str(out / "stage2"), **runtime,
        )  # fmt: skip
        result2 = stage2_flow(stage2)
    with tracking.start_run(config.runtime.tracking, "demo", tags) as run:
        with steps.step("curated vs uncurated RMs on held-out human pairs"):
            comparison = _compare(config, summary1, result1["setup"]["holdout"], result2)
        with steps.step("final RM on benchmarks outside every set"):
            evaluation = _evaluate(config, summary1.best_rm)
        with steps.step("report"):
            demo = DemoSummary(
                stage1=summary1, stage2=result2["counts"],
                audit=result2["audit"].rows() if result2["audit"] else [],
                evaluation=evaluation, comparison=comparison, steps=steps.times,
                mlflow_run_id=run.info.run_id,
            )  # fmt: skip
            path = write_json(demo, out / "demo.json")
            report = write_report(render_report(demo, str(path)), out)
            tracking.log_table([s.model_dump() for s in steps.times], "demo_steps.json")
        demo.steps = steps.times  # the report step's own time too
        write_json(demo, path)
        log_report(report, run.info.run_id, config.runtime.tracking.tracking_uri)
    return {"summary": str(path), "report": str(report[0]), "demo": demo}


def _train(config: DemoFlowConfig, name: str, train: str, model: str) -> str:
    """Train on ``train`` (last checkpoint: no gold selection, so no held-out pair is seen) and
    register it, in a run of its own (nested in the demo's run when one is open)."""
    import mlflow

    training = config.training.model_copy(
        update={"train_manifest": train, "gold_manifest": None, "out": str(Path(config.out) / name)}
    )
    nested = mlflow.active_run() is not None
    with tracking.start_run(config.runtime.tracking, f"demo-{name}", {"flow": "demo"}, nested):
        result = train_rm(training, config.runtime.executor)
        register_rm(result, training, config.runtime.tracking, model)
    return result.best_dir


def _compare(config: DemoFlowConfig, summary1, holdout: str, result2: dict) -> list[dict[str, Any]]:
    """Curated vs the same number of uncurated pairs of the same noisy half (Stage 2's D_wild);
    Stage 1's RM too; all on the held-out pairs."""
    executor, out = config.runtime.executor, Path(config.out)
    curated, noisy = result2["selected"], result2["wild"]
    share = min(1.0, load_manifest(curated).rows / max(load_manifest(noisy).rows, 1))
    uncurated = select_pairs(
        SelectConfig(input=noisy, out=str(out / "uncurated"), split=(0.0, share),
                     seed=config.seed + 1),
        executor,
    )  # fmt: skip
    models = {
        "curated (Stage 2 kept + flipped)": (curated, _train(config, "rm-curated", curated,
                                                             "synpref-demo-curated")),
        "uncurated (same noisy half, as is)": (uncurated, _train(config, "rm-uncurated",
                                                                  uncurated,
                                                                  "synpref-demo-uncurated")),
        "Stage 1 final RM (D_silver)": (summary1.silver, summary1.best_rm),
    }  # fmt: skip
    max_length = resolve_profile(config.training).max_length
    rows = []
    for i, (name, (train, rm)) in enumerate(models.items()):
        scores = score_pairs(
            ScoreConfig(model=rm, pairs=holdout, out=str(out / "compare" / str(i)),
                        max_length=max_length),
            executor,
        )  # fmt: skip
        accuracy = heldout_accuracy(scores, seed=config.seed)
        rows.append({"model": name, "train_pairs": load_manifest(train).rows, **accuracy})
    rows.append({"model": "length baseline (longer response)", "train_pairs": 0,
                 "accuracy": length_baseline(holdout), "lo": None, "hi": None,
                 "pairs": load_manifest(holdout).rows})  # fmt: skip
    tracking.log_table(rows, "comparison.json")
    return rows


def _evaluate(config: DemoFlowConfig, rm: str) -> list[dict[str, Any]]:
    out, max_length = Path(config.out) / "eval", resolve_profile(config.training).max_length
    rows = []
    for fmt, paths in config.benchmarks.items():
        result = evaluate_benchmark(rm, fmt, paths, str(out / fmt), max_length)
        rows.append(
            {"benchmark": fmt, "accuracy": result.overall,
             "length_baseline": result.length_baseline, "pairs": result.count}
        )  # fmt: skip
    return rows


def main() -> None:
    from synpref_core.annotate.client import EndpointDownError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="DemoFlowConfig YAML (default: embedded)")
    args = parser.parse_args()
    started = time.perf_counter()
    try:
        config = load_config(args.config, DemoFlowConfig) if args.config else DemoFlowConfig()
        result = demo_flow(config)
    except (ConfigError, StageError, ModelNotFoundError, EndpointDownError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    demo: DemoSummary = result["demo"]
    print(f"\nsynpref demo finished in {time.perf_counter() - started:.0f} s")
    for step in demo.steps:
        print(f"  {step.seconds:7.0f} s  {step.step}")
    for row in demo.comparison:
        interval = "" if row["lo"] is None else f" [{row['lo']:.3f}, {row['hi']:.3f}]"
        print(f"  held-out accuracy {row['accuracy']:.3f}{interval}  {row['model']}")
    print(f"report: {result['report']} (and report.md beside it)")
    print(f"summary: {result['summary']}; MLflow: `mlflow ui --backend-store-uri "
          f"{tracking.resolve_uri(config.runtime.tracking)}`")  # fmt: skip
    print(f"curated pairs: {Path(config.out) / 'stage2' / 'keep'} "
          f"(synpref export {Path(config.out) / 'stage2'} --out curated.parquet)")  # fmt: skip


if __name__ == "__main__":
    main()
