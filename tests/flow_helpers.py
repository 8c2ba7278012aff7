"""Small real inputs for flow tests, everything under one temporary directory: a retrieve round
over OffsetBias (pool) and LLMBar Natural (gold) with a tiny real reward model, and Stage 2 runs
over the same sources or over hh-rlhf in several shards."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from tests.conftest import DATA

WILD_RECORDS = 200  # hh-rlhf records of D_wild: 4 shards of 64 KiB


def tiny_retrieve_config(tmp_path: Path, experiment: str = "synpref"):
    from flows.retrieve import RetrieveFlowConfig
    from synpref_core.config import IngestConfig, RuntimeConfig, SourceSpec, TrackingConfig
    from synpref_core.retrieval.store import StoreConfig
    from tests.rm_helpers import tiny_model_dir

    natural = DATA / "llmbar" / "Dataset" / "LLMBar" / "Natural"
    tracking = TrackingConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment=experiment
    )
    return RetrieveFlowConfig(
        ingest=IngestConfig(
            sources=[
                SourceSpec(format="offsetbias", paths=[str(DATA / "offsetbias")]),
                SourceSpec(format="llmbar", status="gold", paths=[str(natural)]),
            ],
            out=str(tmp_path / "ingest"),
        ),
        rm=str(tiny_model_dir(tmp_path)),
        rm_max_length=64,
        store=StoreConfig(uri=str(tmp_path / "vectors")),
        out=str(tmp_path / "retrieve"),
        runtime=RuntimeConfig(tracking=tracking),
    )


def hh_records(models: Path) -> Path:
    """The first WILD_RECORDS hh-rlhf harmless records as JSONL under ``models`` (written once)."""
    from tests.ingest_helpers import HH

    source = models / "hh.jsonl"
    if not source.exists():
        models.mkdir(parents=True, exist_ok=True)
        lines = gzip.decompress(HH.read_bytes()).splitlines(True)[:WILD_RECORDS]
        source.write_bytes(b"".join(lines))
    return source


def tiny_training(models: Path, **update):
    """A few optimizer steps of the tiny seed-1 backbone under ``models`` (fp32, 64 tokens)."""
    from synpref_core.rm.train import TrainConfig
    from tests.rm_helpers import tiny_model_dir

    model = str(tiny_model_dir(models / "backbone", seed=1))
    settings = {"profile": "full", "max_length": 64, "bf16": False, "micro_batch": 4, "lr": 1e-3}
    return TrainConfig(model=model, **(settings | update))


def start_flow(module: str, config, env: dict[str, str]):
    """``python -m flows.<module> --config`` on ``config`` (written as YAML next to its
    output), in a new process group, its output appended to a log there; (process, log)."""
    import subprocess

    import yaml

    from tests.conftest import REPO

    root = Path(config.out).parent
    path, log = root / f"{module}.yaml", root / f"{module}.log"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    python = str(REPO / ".venv" / "bin" / "python")
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            [python, "-m", f"flows.{module}", "--config", str(path)],
            cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return proc, log


def tiny_stage2_config(tmp_path: Path, models: Path | None = None, **update):
    """Stage 2 over OffsetBias (D_wild) with LLMBar Natural as gold; outputs under ``tmp_path``,
    the tiny best RM (seed 0) and gold backbone (seed 1) under ``models`` (default: tmp_path)."""
    from flows.stage2 import Stage2FlowConfig
    from synpref_core.annotate.panel import JudgePanel
    from synpref_core.config import IngestConfig, RuntimeConfig, SourceSpec, TrackingConfig
    from synpref_core.curation.select import PairFilter
    from synpref_core.retrieval.store import StoreConfig
    from tests.rm_helpers import tiny_model_dir

    models = models or tmp_path
    natural = DATA / "llmbar" / "Dataset" / "LLMBar" / "Natural"
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="s2")
    config = Stage2FlowConfig(
        ingest=IngestConfig(
            sources=[
                SourceSpec(format="offsetbias", paths=[str(DATA / "offsetbias")]),
                SourceSpec(format="llmbar", status="gold", paths=[str(natural)]),
            ],
            out=str(tmp_path / "ingest"),
        ),
        wild_on=PairFilter(sources=["offsetbias"], statuses=["unverified"]),
        best_rm=str(tiny_model_dir(models / "best")),
        gold_model_name="gold-rm-test",
        min_gold_pairs=50,
        gold_training=tiny_training(models, eval_every=5),
        panel=JudgePanel(samples=2, cache_dir=str(tmp_path / "cache")),
        store=StoreConfig(uri=str(tmp_path / "vectors")),  # no gold there: zero-shot
        out=str(tmp_path / "stage2"),
        runtime=RuntimeConfig(tracking=tracking),
    )
    return config.model_copy(update=update)


def wild_stage2_config(tmp_path: Path, models: Path, **update):
    """Stage 2 with D_wild in several shards and nothing to train, on the local executor:
    the first WILD_RECORDS hh-rlhf harmless records (written once under ``models``) ingested in
    64 KiB shards, the tiny seed-1 model given as the gold RM. Runs with the same ``models``
    read the same input and RMs; each writes only under its own ``tmp_path``."""
    from synpref_core.config import ExecutorConfig, IngestConfig, SourceSpec
    from synpref_core.curation.select import PairFilter

    source = hh_records(models)
    config = tiny_stage2_config(tmp_path, models)
    ingest = IngestConfig(
        sources=[SourceSpec(format="hh-rlhf", paths=[str(source)])],
        out=str(tmp_path / "ingest"),
        shard_bytes=2**16,
    )
    runtime = config.runtime.model_copy(update={"executor": ExecutorConfig(kind="local")})
    return config.model_copy(
        update={
            "ingest": ingest,
            "wild_on": PairFilter(sources=["hh-rlhf"], statuses=["unverified"]),
            "gold_rm": config.gold_training.model,
            "runtime": runtime,
            **update,
        }
    )


def tiny_stage1_config(tmp_path: Path, models: Path | None = None, **update):
    """Stage 1 over the first WILD_RECORDS hh-rlhf harmless records (the pool) with LLMBar
    Natural as the seed set; a tiny real backbone trained a few steps per round, the local judge
    on the round's RM, recorded hh-rlhf labels replayed as the humans; all under ``tmp_path``."""
    from flows.stage1 import HumanStep, Stage1FlowConfig
    from synpref_core.annotate.panel import JudgePanel
    from synpref_core.config import IngestConfig, RuntimeConfig, SourceSpec, TrackingConfig
    from synpref_core.curation.select import PairFilter
    from synpref_core.retrieval.store import StoreConfig

    models = models or tmp_path
    source = hh_records(models)
    natural = DATA / "llmbar" / "Dataset" / "LLMBar" / "Natural"
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="s1")
    config = Stage1FlowConfig(
        ingest=IngestConfig(
            sources=[
                SourceSpec(format="hh-rlhf", paths=[str(source)]),
                SourceSpec(format="llmbar", status="gold", paths=[str(natural)]),
            ],
            out=str(tmp_path / "ingest"),
        ),
        pool_on=PairFilter(sources=["hh-rlhf"], statuses=["unverified"]),
        training=tiny_training(models, max_steps=6, eval_every=3, workers=1),
        model_name="stage1-rm-test",
        panel=JudgePanel(samples=2, cache_dir=str(tmp_path / "cache")),
        calibration=PairFilter(split=(0.0, 0.3)),
        human=HumanStep(size=12, db_url=f"sqlite:///{tmp_path / 'human.db'}"),
        store=StoreConfig(uri=str(tmp_path / "vectors")),
        out=str(tmp_path / "stage1"),
        runtime=RuntimeConfig(tracking=tracking),
    )
    return config.model_copy(update=update)


def tiny_demo_config(tmp_path: Path, models: Path | None = None, local: bool = False, **update):
    """The whole demo on tiny parts: Stage 1 (tiny_stage1_config) over half of the hh-rlhf
    records, Stage 2 over the other half, OffsetBias as the final benchmark. ``local``: stages
    run in the flow's process (one model load, one judge server), training still on Ray Train."""
    from flows.demo import DemoFlowConfig
    from synpref_core.config import ExecutorConfig
    from synpref_core.curation.select import PairFilter

    stage1 = tiny_stage1_config(tmp_path, models)
    runtime = stage1.runtime
    if local:
        runtime = runtime.model_copy(update={"executor": ExecutorConfig(kind="local")})
    stage1 = stage1.model_copy(
        update={
            "pool_on": PairFilter(sources=["hh-rlhf"], statuses=["unverified"], split=(0.0, 0.5)),
            "runtime": runtime,
        }
    )
    config = DemoFlowConfig(
        ingest=stage1.ingest,
        stage1=stage1,
        wild_on=PairFilter(sources=["hh-rlhf"], statuses=["unverified"], split=(0.5, 1.0)),
        training=stage1.training,
        benchmarks={"offsetbias": [str(DATA / "offsetbias")]},
        out=str(tmp_path / "demo"),
        runtime=stage1.runtime,
    )
    return config.model_copy(update=update)


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A flow run's environment for ``python -m flows.X`` in a subprocess: this checkout,
    Prefect's temporary server in a private home (given time to start on a loaded machine), no
    inherited Prefect API or Ray address."""
    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "RAY_"))}
    return {
        **env,
        "PYTHONPATH": str(REPO),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **extra,
    }
