"""The train_rm flow end to end: real Prefect, ingest and selection on real data, a tiny real RM
trained through Ray Train + DeepSpeed (CPU, gloo), registered in MLflow (SQLite), then scored."""

from __future__ import annotations

import pytest

from synpref_core.config import (
    ExecutorConfig,
    IngestConfig,
    RuntimeConfig,
    SourceSpec,
    TrackingConfig,
)
from synpref_core.curation.select import PairFilter
from synpref_core.rm.train import TrainConfig
from synpref_core.stages import load_manifest
from tests.conftest import DATA, REPO
from tests.rm_helpers import tiny_model_dir

FIXTURES = REPO / "tests" / "fixtures" / "formats"


@pytest.mark.slow
def test_train_rm_flow_trains_registers_and_evaluates(tmp_path, prefect_server, ray_local):
    import mlflow
    from transformers import AutoModelForSequenceClassification

    from flows.evaluate import BenchmarkSpec
    from flows.train_rm import TrainRMFlowConfig, train_rm_flow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    natural = DATA / "llmbar" / "Dataset" / "LLMBar" / "Natural"
    config = TrainRMFlowConfig(
        ingest=IngestConfig(
            sources=[
                SourceSpec(format="offsetbias", paths=[str(DATA / "offsetbias")]),
                SourceSpec(format="llmbar", status="gold", paths=[str(natural)]),
            ],
            out=str(tmp_path / "ingest"),
        ),
        train_on=PairFilter(sources=["offsetbias"]),
        gold_on=PairFilter(statuses=["gold"]),
        # 80 pairs / (4 pairs x 2 workers) = 10 steps; eval + checkpoint every 5
        training=TrainConfig(
            model=str(tiny_model_dir(tmp_path)),
            profile="full",
            max_length=64,
            bf16=False,
            micro_batch=4,
            lr=1e-3,
            eval_every=5,
        ),
        benchmarks=[
            BenchmarkSpec(
                format="rm-bench", paths=[str(REPO / "tests/fixtures/formats/rm-bench.json")]
            )
        ],
        out=str(tmp_path / "train_rm"),
        model_name="rm-flow-test",
        runtime=RuntimeConfig(
            executor=ExecutorConfig(kind="ray"),
            tracking=TrackingConfig(tracking_uri=uri, experiment="train-rm"),
        ),
    )
    state = train_rm_flow(config, return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary["version"] == 1 and summary["steps"] == 10
    assert summary["best_step"] in (5, 10) and 0.0 <= summary["best_gold_accuracy"] <= 1.0
    assert summary["benchmarks"]["rm-bench"].count == 18

    train = load_manifest(str(tmp_path / "train_rm" / "train"))
    gold = load_manifest(str(tmp_path / "train_rm" / "gold"))
    assert train.rows == 80 and 90 < gold.rows <= 100  # LLMBar Natural: 100 rows in
    assert train.counts["input_rows"] == train.rows + train.counts["not_selected"]

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("train-rm").experiment_id])
    metrics = run.data.metrics
    assert metrics["train_rows"] == 80 and metrics["gold_rows"] == gold.rows
    assert [m.step for m in client.get_metric_history(run.info.run_id, "gold_accuracy")] == [5, 10]
    assert any(k.startswith("rm-bench") for k in metrics)
    version = client.get_model_version("rm-flow-test", "1")
    assert version.run_id == run.info.run_id
    assert version.tags["synpref.train_manifest"].endswith("train/manifest.json")
    assert version.tags["synpref.gold_manifest"].endswith("gold/manifest.json")
    downloaded = mlflow.artifacts.download_artifacts(
        "models:/rm-flow-test/1", dst_path=str(tmp_path / "dl"), tracking_uri=uri
    )
    model = AutoModelForSequenceClassification.from_pretrained(downloaded)
    assert model.config.num_labels == 1
