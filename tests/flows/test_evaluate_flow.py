"""The evaluate flow end to end: real Prefect, a tiny real RM, MLflow on SQLite."""

from __future__ import annotations

import pytest

from synpref_core.config import RuntimeConfig, TrackingConfig
from tests.conftest import DATA, REPO
from tests.rm_helpers import tiny_model_dir


@pytest.mark.slow
def test_evaluate_flow_logs_every_benchmark(tmp_path, prefect_server):
    import mlflow

    from flows.evaluate import BenchmarkSpec, EvaluateFlowConfig, evaluate_flow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fixtures = REPO / "tests" / "fixtures" / "formats"
    config = EvaluateFlowConfig(
        model=str(tiny_model_dir(tmp_path)),
        benchmarks=[
            BenchmarkSpec(format="offsetbias", paths=[str(DATA / "offsetbias")]),
            BenchmarkSpec(format="rm-bench", paths=[str(fixtures / "rm-bench.json")]),
        ],
        out=str(tmp_path / "eval"),
        max_length=64,
        runtime=RuntimeConfig(tracking=TrackingConfig(tracking_uri=uri, experiment="eval")),
    )
    results = evaluate_flow(config)
    assert set(results) == {"offsetbias", "rm-bench"}
    assert results["rm-bench"].count == 18 and results["offsetbias"].count > 60
    for result in results.values():
        assert 0.0 <= result.overall <= 1.0 and 0.0 <= result.length_baseline <= 1.0

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("eval").experiment_id])
    assert run.data.params["model"] == config.model
    assert any(k.startswith("offsetbias") for k in run.data.metrics)
    assert any(k.startswith("rm-bench") for k in run.data.metrics)
    eval_dirs = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert eval_dirs == {"eval/offsetbias", "eval/rm-bench"}
