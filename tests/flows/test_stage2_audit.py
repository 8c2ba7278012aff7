"""The stage2 flow's noise-injection audit end to end: real Prefect, local Ray, tiny real RMs
(the gold RM given, so nothing trains: test_stage2_flow covers training), the local judge server;
the noisy copy of D_wild is what Stage 2 curates, and the audit's metrics and table reach MLflow.
The tiny RMs are random: no assertion on the quality figures, only on their presence and the
accounting."""

from __future__ import annotations

import pytest

from synpref_core.stages import load_manifest, read_stage
from tests.flow_helpers import tiny_stage2_config


@pytest.mark.slow
def test_the_audit_option_curates_the_noisy_copy_and_logs_the_audit(
    tmp_path, prefect_server, ray_local
):
    import mlflow

    from flows.stage2 import stage2_flow

    config = tiny_stage2_config(tmp_path, audit_noise=0.3, audit_seed=1)
    config = config.model_copy(update={"gold_rm": config.gold_training.model})
    summary = stage2_flow(config)
    wild = load_manifest(str(tmp_path / "stage2" / "wild"))
    noisy = load_manifest(str(tmp_path / "stage2" / "noisy"))
    audit = summary["audit"]
    injected = sum(v for k, v in audit.counts.items() if k.startswith("injected."))
    assert noisy.counts["injected"] + noisy.counts["clean"] == noisy.rows == wild.rows > 0
    assert injected == noisy.counts["injected"] > 0
    assert sum(audit.counts.values()) == wild.rows == summary["counts"]["rows"]
    # Stage 2 read the noisy copy: every curated row comes from a noisy pair
    curated = read_stage(summary["curated"], ["pair_id", "parent_id", "status"]).to_pylist()
    origins = {r["parent_id"] if r["status"] == "flipped" else r["pair_id"] for r in curated}
    assert origins == set(read_stage(noisy.dir, ["pair_id"])["pair_id"].to_pylist())

    client = mlflow.MlflowClient(config.runtime.tracking.tracking_uri)
    experiment = client.get_experiment_by_name("s2").experiment_id
    run = next(r for r in client.search_runs([experiment]) if r.data.tags["flow"] == "stage2")
    metrics = run.data.metrics
    for name in ("injected_caught", "clean_lost"):  # both have pairs to share over
        share = audit.metrics[name]["share"]
        assert metrics[f"audit.{name}"] == share
        assert metrics[f"audit.{name}_ci_low"] <= share <= metrics[f"audit.{name}_ci_high"]
    assert sum(v for k, v in metrics.items() if k.startswith("audit.injected.")) == injected
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "stage2_audit.json" in artifacts
