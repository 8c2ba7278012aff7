"""The whole pipeline end to end on tiny real parts (issue 13), as a user runs it:
``python -m flows.demo --config CFG.yaml`` in its own process group (real Prefect with its
temporary server, the stages on the local executor (one model load and one judge server per
process; the Ray executor runs a round in test_stage1_deployment.py), DeepSpeed training through
Ray Train on a local Ray, a real LanceDB store, the
local judge server on each round's RM, the verification app served in-process and the hh-rlhf
crowd's recorded labels replayed over its HTTP API, MLflow on SQLite): Stage 1 in 2 rounds over
half of 200 hh-rlhf records with LLMBar Natural as the seed set, a gold RM, Stage 2 over the
other half with 20% swapped, the comparison and the report.

The run is SIGKILLed (the whole process group) as soon as Stage 1's round 1 record is written,
then run again: Stage 1 must resume at round 2 without touching round 1, the finished Stage 1
must account for every set, with one MLflow parent run and a child run per round, and the demo
must finish with its summary, its report and every Stage 2 pair accounted for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from synpref_core.curation.stage1 import chain_hash, record_path, rounds_identity
from synpref_core.run_summary import DemoSummary, RoundRecord, Stage1Summary
from synpref_core.stages import load_manifest, read_stage
from tests.conftest import REPO
from tests.flow_helpers import start_flow, subprocess_env, tiny_demo_config

RUN_TIMEOUT_S = 1500  # the tiny demo: ~5 min quiet, several times that on a busy 2-core box


def _versions(config) -> list:
    import mlflow

    client = mlflow.MlflowClient(config.runtime.tracking.tracking_uri)
    return client.search_model_versions(f"name = '{config.model_name}'")


@pytest.mark.slow
@pytest.mark.timeout(2 * RUN_TIMEOUT_S + 300)
def test_demo_killed_between_stage1_rounds_resumes_at_the_next_round(tmp_path):
    from flows.stage1 import NOT_ROUND_FIELDS

    demo = tiny_demo_config(tmp_path, local=True)
    config = demo.stage1.model_copy(update={"pairs": None})
    env = subprocess_env(tmp_path)
    first, second = record_path(config.out, 1), record_path(config.out, 2)

    proc, log = start_flow("demo", demo, env)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not first.exists():
            assert proc.poll() is None, log.read_text(errors="replace")[-6000:]
            assert time.monotonic() < deadline, "round 1 did not finish in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the flow, Prefect's temporary server, all of it
        proc.wait()
    assert not second.exists()
    round1 = (first.read_bytes(), first.stat().st_mtime_ns)
    assert len(_versions(config)) == 1

    proc, log = start_flow("demo", demo, env)
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text(errors="replace")
    assert rc == 0, text[-6000:]
    assert "resuming after round 1" in text
    assert (first.read_bytes(), first.stat().st_mtime_ns) == round1, "round 1 was redone"
    assert len(_versions(config)) == 2  # round 1's RM was not trained again
    assert "synpref demo finished" in text

    # the finished Stage 1: records chained to its config, every set accounted for
    config = config.model_copy(update={"pairs": _pairs(demo)})
    records = [RoundRecord.model_validate_json(p.read_text()) for p in (first, second)]
    identity = rounds_identity(config, NOT_ROUND_FIELDS)
    assert records[0].chain == chain_hash(identity, None)
    assert records[1].chain == chain_hash(identity, records[0])
    summary = Stage1Summary.model_validate_json((Path(config.out) / "stage1.json").read_text())
    assert [r.round for r in summary.rounds] == [1, 2]
    seed = load_manifest(str(Path(config.out) / "seed-gold")).rows
    holdout = load_manifest(str(Path(config.out) / "holdout")).rows
    assert seed > 0 and holdout > 0
    held_out = set(
        read_stage(str(Path(config.out) / "holdout"), ["pair_id"])["pair_id"].to_pylist()
    )
    for record in records:
        judged = record.judge
        assert sum(judged.values()) == record.retrieval["candidates"] > 0
        human = record.human
        assert human["items"] == config.human.size == human["submitted"]
        assert human["unmatched"] == human["refused"] == 0
        sizes = record.sizes
        assert sizes["human_gold"] == config.human.size * record.round  # the crowd never ties
        assert sizes["gold"] == seed + sizes["human_gold"]
        gold = read_stage(record.manifests["gold"], ["pair_id", "status", "decided_by"])
        assert set(gold["status"].to_pylist()) == {"gold"}
        assert not held_out & set(gold["pair_id"].to_pylist())  # no round sees the held-out
        silver = read_stage(record.manifests["silver"]).to_pylist()
        ids = [r["pair_id"] for r in silver]
        assert len(set(ids)) == len(ids) == sizes["silver"]
        assert not held_out & set(ids)
        human_ids = {r["pair_id"] for r in silver if r["decided_by"] == "human"}
        parents = {r["parent_id"] for r in silver if r["decided_by"] == "human"} - {None}
        assert len(human_ids) == sizes["human_gold"]  # train_on_gold
        assert not parents & set(ids), "a pair humans swapped is still in silver as it was"
        agreed = [r for r in silver if r["status"] == "silver"]
        assert all(r["decided_by"] == "llm" and r["evidence"]["judge_votes"] for r in agreed)
    # silver grows by what the round's judges agreed with and humans did not overrule
    assert records[1].sizes["silver"] > records[0].sizes["silver"]

    import mlflow

    client = mlflow.MlflowClient(config.runtime.tracking.tracking_uri)
    experiment = client.get_experiment_by_name("s1").experiment_id
    runs = client.search_runs([experiment])
    parents = {r.info.run_id for r in runs if r.info.run_name == "stage1"}
    assert summary.mlflow_run_id in parents
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in parents]
    rounds = {r.data.tags["round"]: r for r in children if r.info.status == "FINISHED"}
    assert set(rounds) == {"1", "2"}
    for record in records:
        metrics = rounds[str(record.round)].data.metrics
        assert metrics["gold.accuracy"] == pytest.approx(record.gold_accuracy)
        assert metrics["sets.silver"] == record.sizes["silver"]
        assert metrics["retrieval_candidates"] == record.retrieval["candidates"]
        assert any(row["slice"] == "all" for row in record.judge_vs_gold)
        assert record.rm_version in {str(v.version) for v in _versions(config)}

    report = subprocess.run(
        [str(REPO / ".venv" / "bin" / "synpref"), "report", config.out,
         "--tracking-uri", config.runtime.tracking.tracking_uri],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    html = (Path(config.out) / "report.html").read_text()
    assert "Round" in html or "round" in html
    assert json.loads((Path(config.out) / "stage1.json").read_text())["rounds"]

    # the rest of the demo: Stage 2 accounts for every wild pair; the comparison and the report
    summary = DemoSummary.model_validate_json((Path(demo.out) / "demo.json").read_text())
    wild = load_manifest(str(Path(demo.out) / "wild")).rows
    counts = summary.stage2
    assert counts["kept"] + counts["flipped"] + counts["discarded"] == wild > 0
    assert [row["metric"] for row in summary.audit]  # the noise audit ran
    models = [row["model"] for row in summary.comparison]
    assert any(m.startswith("curated") for m in models)
    assert any(m.startswith("uncurated") for m in models)
    for row in summary.comparison:
        assert row["pairs"] == holdout
        if row["lo"] is not None:
            assert row["lo"] <= row["accuracy"] <= row["hi"]
    assert [e["benchmark"] for e in summary.evaluation] == list(demo.benchmarks)
    assert len(summary.steps) == 7 and all(s.seconds >= 0 for s in summary.steps)
    report = (Path(demo.out) / "report.html").read_text()
    assert "data:image/png;base64," in report
    artifacts = {a.path for a in client.list_artifacts(summary.mlflow_run_id, "report")}
    assert "report/report.html" in artifacts


def _pairs(demo) -> str:
    """The ingested stage the demo gave Stage 1 (its config's `pairs`, part of its identity)."""
    return str(Path(demo.ingest.out) / "manifest.json")
