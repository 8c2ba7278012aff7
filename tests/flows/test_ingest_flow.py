"""The ingest flow end to end: a real Prefect (test harness server), local Ray, MLflow on SQLite."""

from __future__ import annotations

import json
import re

import pytest

from synpref_core.config import (
    DecontamConfig,
    ExecutorConfig,
    IngestConfig,
    RuntimeConfig,
    SourceSpec,
    TrackingConfig,
)
from synpref_core.stages import load_manifest
from tests.conftest import DATA


@pytest.mark.slow
def test_ingest_flow_leaves_shards_and_an_mlflow_run(tmp_path, prefect_server, ray_local):
    import mlflow

    from flows.ingest import IngestFlowConfig, ingest_flow

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = IngestFlowConfig(
        ingest=IngestConfig(
            sources=[
                SourceSpec(format="pandalm", paths=[str(DATA / "pandalm")], status="gold"),
                SourceSpec(format="offsetbias", paths=[str(DATA / "offsetbias")]),
            ],
            decontamination=DecontamConfig(
                benchmarks=[SourceSpec(format="llmbar", paths=[str(DATA / "llmbar")])]
            ),
            out=str(tmp_path / "ingest"),
        ),
        runtime=RuntimeConfig(
            executor=ExecutorConfig(kind="ray"),
            tracking=TrackingConfig(tracking_uri=tracking_uri, experiment="test-ingest"),
        ),
    )
    state = ingest_flow(config, return_state=True)
    assert state.is_completed()
    manifest_uri = state.result()
    manifest = load_manifest(manifest_uri)
    counts = manifest.counts
    assert counts["input_rows"] == 999 + 80
    assert counts["input_rows"] == (
        counts["rows"] + counts["quarantined"] + counts["duplicates"] + counts["contaminated"]
    )

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("test-ingest")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["rows"] == counts["rows"] == manifest.rows
    assert run.data.metrics["duplicates"] == counts["duplicates"]
    assert run.data.metrics["normalize_rows"] >= counts["rows"]
    assert json.loads(run.data.params["ingest.sources"])[0]["format"] == "pandalm"
    assert run.data.params["runtime.executor.kind"] == "ray"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "manifests"} <= artifacts
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "manifests")}
    assert logged == {"manifests/ingest", "manifests/normalize"}
    assert str(tmp_path) in run.info.artifact_uri  # artifacts beside the database, not in cwd


@pytest.mark.slow
def test_main_ends_with_the_counts_and_the_next_commands(tmp_path, prefect_server, capsys):
    """`make demo` (flows.ingest main) prints the counts table and what to run next."""
    import yaml

    from flows.ingest import IngestFlowConfig, main

    out = tmp_path / "ingest"
    config = IngestFlowConfig(
        ingest=IngestConfig(
            sources=[SourceSpec(format="pandalm", paths=[str(DATA / "pandalm")], status="gold")],
            out=str(out),
        ),
        runtime=RuntimeConfig(
            executor=ExecutorConfig(kind="local"),
            tracking=TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
        ),
    )
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))

    main(["--config", str(path)])

    printed = capsys.readouterr().out
    counts = load_manifest(str(out)).counts
    for outcome in ("input_rows", "rows", "quarantined", "duplicates", "contaminated"):
        assert re.search(rf"│ {outcome} +│ +{counts.get(outcome, 0):,} │", printed), outcome
    tail = printed[printed.index("Next:") :]
    for command in (
        f"synpref inspect {out}",
        f"synpref export {out}",
        "make flow-train-rm",
        "make flow-retrieve",
        "make server",
    ):
        assert command in tail
