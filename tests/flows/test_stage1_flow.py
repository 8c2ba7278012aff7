"""The stage1 flow end to end on tiny real parts (issue 13), as a user runs it:
``python -m flows.stage1 --config CFG.yaml`` in its own process group (real Prefect with its
temporary server, local Ray, DeepSpeed training through Ray Train, a real LanceDB store, the
local judge server on each round's RM, the verification app served in-process and the hh-rlhf
crowd's recorded labels replayed over its HTTP API, MLflow on SQLite).

The run is SIGKILLed (the whole process group) as soon as round 1's record is written, then run
again: it must resume at round 2 without touching round 1, and the finished run must account for
every set, with one MLflow parent run and a child run per round, and render as a report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from synpref_core.curation.stage1 import chain_hash, record_path, rounds_identity
from synpref_core.run_summary import RoundRecord, Stage1Summary
from synpref_core.stages import load_manifest, read_stage
from tests.conftest import REPO
from tests.flow_helpers import subprocess_env, tiny_stage1_config

RUN_TIMEOUT_S = 1200  # two rounds: ~2.5 min quiet, several times that on a busy 2-core box


def _start(config, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    root = Path(config.out).parent
    path, log = root / "stage1.yaml", root / "stage1.log"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "python"), "-m", "flows.stage1", "--config", str(path)],
            cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return proc, log


def _versions(config) -> list:
    import mlflow

    client = mlflow.MlflowClient(config.runtime.tracking.tracking_uri)
    return client.search_model_versions(f"name = '{config.model_name}'")


@pytest.mark.slow
@pytest.mark.timeout(2 * RUN_TIMEOUT_S + 300)
def test_stage1_killed_between_rounds_resumes_at_the_next_round(tmp_path):
    from flows.stage1 import NOT_ROUND_FIELDS

    config = tiny_stage1_config(tmp_path, rounds=2)
    env = subprocess_env(tmp_path)
    first, second = record_path(config.out, 1), record_path(config.out, 2)

    proc, log = _start(config, env)
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

    proc, log = _start(config, env)
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

    # the finished run: records chained to this config, every set accounted for
    records = [RoundRecord.model_validate_json(p.read_text()) for p in (first, second)]
    identity = rounds_identity(config, NOT_ROUND_FIELDS)
    assert records[0].chain == chain_hash(identity, None)
    assert records[1].chain == chain_hash(identity, records[0])
    summary = Stage1Summary.model_validate_json((Path(config.out) / "stage1.json").read_text())
    assert [r.round for r in summary.rounds] == [1, 2]
    seed = load_manifest(str(Path(config.out) / "seed-gold")).rows
    holdout = load_manifest(str(Path(config.out) / "holdout")).rows
    assert seed > 0 and holdout > 0
    held_out = set(read_stage(str(Path(config.out) / "holdout"), ["pair_id"])["pair_id"].to_pylist())
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
        assert metrics["retrieval.candidates"] == record.retrieval["candidates"]
        assert any(row["slice"] == "all" for row in record.judge_vs_gold)
        assert record.rm_version in {v.version for v in _versions(config)}

    report = subprocess.run(
        [str(REPO / ".venv" / "bin" / "synpref"), "report", config.out,
         "--tracking-uri", config.runtime.tracking.tracking_uri],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    html = (Path(config.out) / "report.html").read_text()
    assert "Round" in html or "round" in html
    assert json.loads((Path(config.out) / "stage1.json").read_text())["rounds"]
