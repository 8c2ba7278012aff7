"""Small real inputs for flow tests: a retrieve round and a Stage 2 run over OffsetBias (pool /
D_wild) and LLMBar Natural (gold) with tiny real reward models, everything under one temporary
directory."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import DATA


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


def tiny_stage2_config(tmp_path: Path, **update):
    """Stage 2 over OffsetBias (D_wild) with LLMBar Natural as gold: a tiny real best RM, a
    tiny gold RM trained by the flow, the two as local judges, MLflow on SQLite."""
    from flows.stage2 import Stage2FlowConfig
    from synpref_core.annotate.panel import JudgePanel
    from synpref_core.config import IngestConfig, RuntimeConfig, SourceSpec, TrackingConfig
    from synpref_core.curation.select import PairFilter
    from synpref_core.retrieval.store import StoreConfig
    from synpref_core.rm.train import TrainConfig
    from tests.rm_helpers import tiny_model_dir

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
        best_rm=str(tiny_model_dir(tmp_path / "best")),
        gold_model_name="gold-rm-test",
        min_gold_pairs=50,
        gold_training=TrainConfig(
            model=str(tiny_model_dir(tmp_path / "backbone", seed=1)),
            profile="full",
            max_length=64,
            bf16=False,
            micro_batch=4,
            lr=1e-3,
            eval_every=5,
        ),
        panel=JudgePanel(samples=2, cache_dir=str(tmp_path / "cache")),
        store=StoreConfig(uri=str(tmp_path / "vectors")),  # no gold there: zero-shot
        out=str(tmp_path / "stage2"),
        runtime=RuntimeConfig(tracking=tracking),
    )
    return config.model_copy(update=update)
