"""The stage2 flow end to end on real data: real Prefect, local Ray, a tiny real best RM, a gold
RM trained now through Ray Train + DeepSpeed on real gold pairs and registered in MLflow
(SQLite), the two RMs served by the local judge server as the LLM step, the consistency filter."""

from __future__ import annotations

import pytest

from synpref_core.stages import load_manifest, read_stage
from tests.flow_helpers import tiny_stage2_config


@pytest.mark.slow
def test_stage2_keeps_flips_or_discards_every_wild_pair(tmp_path, prefect_server, ray_local):
    import mlflow

    from flows.stage2 import stage2_flow

    config = tiny_stage2_config(tmp_path)
    summary = stage2_flow(config)
    curated = read_stage(summary["curated"])
    wild = read_stage(str(tmp_path / "stage2" / "wild"), ["pair_id"])
    counts = summary["counts"]
    assert curated.num_rows == wild.num_rows == counts["rows"] > 0
    assert counts["kept"] + counts["flipped"] + counts["discarded"] == wild.num_rows
    assert counts["discarded"] == sum(v for k, v in counts.items() if k.startswith("discarded:"))
    assert counts["discarded:not_annotated"] == 0
    # every wild pair once: kept ones by id, flipped ones through parent_id
    rows = curated.to_pylist()
    origins = [r["parent_id"] if r["status"] == "flipped" else r["pair_id"] for r in rows]
    assert sorted(origins) == sorted(wild["pair_id"].to_pylist())
    assert len({r["pair_id"] for r in rows}) == len(rows)
    judged = load_manifest(summary["judged"])
    needs = load_manifest(str(tmp_path / "stage2" / "needs-judge"))
    assert judged.rows == needs.rows == counts["llm_checked"] > 0
    assert judged.counts["zero_shot"] == judged.rows
    assert {r["decided_by"] for r in rows} <= {"rm", "llm"}
    assert all(r["evidence"]["p_gold"] is not None for r in rows)
    keep = read_stage(summary["selected"], ["status"])["status"].to_pylist()
    assert sorted(keep) == sorted(s for s in curated["status"].to_pylist() if s != "discarded")

    client = mlflow.MlflowClient(config.runtime.tracking.tracking_uri)
    assert client.search_model_versions("name = 'gold-rm-test'")  # a gold RM was trained
    experiment = client.get_experiment_by_name("s2").experiment_id
    run = next(r for r in client.search_runs([experiment]) if r.data.tags["flow"] == "stage2")
    metrics = run.data.metrics
    assert metrics["stage2_kept"] == counts["kept"]
    assert metrics["stage2.quarantined"] == counts["quarantined"]
    assert metrics["judge_requests"] == 2 * 2 * judged.rows  # two judges, two samples
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "stage2_p_histograms.png" in artifacts

    # A second run uses the registered gold RM and finds every stage finished.
    again = stage2_flow(config)
    assert load_manifest(again["curated"]) == load_manifest(summary["curated"])
