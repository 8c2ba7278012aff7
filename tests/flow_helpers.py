"""Small real inputs for flow tests: a retrieve round over OffsetBias (pool) and LLMBar Natural
(gold) with a tiny real reward model, everything under one temporary directory."""

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
