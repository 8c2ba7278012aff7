"""The annotate flow end to end on a retrieval round's real output: real Prefect, local Ray, the
local judge server (tiny real reward model) over HTTP, gold few-shot from a real LanceDB store,
MLflow on SQLite."""

from __future__ import annotations

import pytest

from synpref_core.annotate.ensemble import OUTCOMES
from synpref_core.stages import load_manifest, read_stage
from tests.flow_helpers import tiny_retrieve_config


@pytest.mark.slow
@pytest.mark.timeout(1500)  # 40 s quiet; a retrieval round and an annotation pass, 460 s loaded
def test_annotate_judges_a_rounds_candidates_and_calibrates(tmp_path, prefect_server, ray_local):
    import mlflow

    from flows.annotate import AnnotateFlowConfig, annotate_flow
    from flows.retrieve import retrieve_flow
    from synpref_core.annotate.panel import JudgePanel
    from synpref_core.retrieval.round import read_candidates

    retrieve = tiny_retrieve_config(tmp_path, experiment="annotate")
    round_1 = retrieve_flow(retrieve)
    candidates = read_candidates(round_1["candidates"])["pair_id"].to_pylist()
    config = AnnotateFlowConfig(
        candidates=round_1["candidates"],
        pairs=str(tmp_path / "retrieve" / "pool"),
        gold=str(tmp_path / "retrieve" / "gold"),
        judges={"best": retrieve.rm},
        panel=JudgePanel(samples=3, cache_dir=str(tmp_path / "cache")),
        store=retrieve.store,
        out=str(tmp_path / "annotate"),
        runtime=retrieve.runtime,
    )
    summary = annotate_flow(config)
    judged = read_stage(summary["judged"])
    counts = summary["counts"]
    assert sorted(judged["pair_id"].to_pylist()) == sorted(candidates)
    assert sum(counts.get(o, 0) for o in OUTCOMES) == counts["rows"] == len(candidates)
    assert counts.get("error", 0) == 0 and counts["zero_shot"] == 0
    assert counts["requests"] == 3 * len(candidates) and counts["requests_sent"] > 0
    attributes = read_stage(str(tmp_path / "annotate" / "attributes"))
    assert all(a["source"].startswith("llm:best-") for a in attributes["task_category"].to_pylist())
    table = summary["calibration"]
    overall = {r["judge"]: r for r in table if r["slice"] == "all"}
    assert set(overall) == {"best", "ensemble"} and overall["best"]["pairs"] > 0

    client = mlflow.MlflowClient(retrieve.runtime.tracking.tracking_uri)
    experiment = client.get_experiment_by_name("annotate").experiment_id
    run = next(r for r in client.search_runs([experiment]) if r.data.tags["flow"] == "annotate")
    metrics = run.data.metrics
    assert metrics["judge_rows"] == len(candidates)
    assert "calibration.ensemble.accuracy" in metrics
    assert any(k.startswith("calibration.best.objectivity.") for k in metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "judge_calibration.json" in artifacts

    # A re-run finds every stage finished: the same judgements, nothing asked again.
    again = annotate_flow(config)
    assert load_manifest(again["judged"]) == load_manifest(summary["judged"])
