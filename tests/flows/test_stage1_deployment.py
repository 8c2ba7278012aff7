"""The `stage1-round` deployment on a real local Prefect server (issue 13).

A server (infra/prefect/server.sh) and a worker on the `synpref` pool (infra/prefect/worker.sh)
are started as users start them (`make ui` starts the same two); `prefect deploy --prefect-file
infra/prefect/prefect.yaml --name stage1-round` registers the deployment with a small config as
its parameters (the first 200 hh-rlhf pairs as the pool, LLMBar Natural as the seed gold, a tiny
backbone, the round's RM as the local judge, recorded human labels replayed), and a run is
created through the server's REST API with no parameters of its own, as the UI's Run → Quick run
does. The worker picks it up and runs exactly one round: the run completes and the round's
record, `<out>/rounds/round-001.json`, is written, and no second one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.flow_helpers import tiny_stage1_config
from tests.prefect_helpers import api_call, deploy, wait_for_flow_run

RUN_TIMEOUT_S = 1200  # one round takes ~90 s on a quiet box, 5+ min on 2 busy CPUs


def test_prefect_yaml_lists_the_stage1_deployments_and_stage2_nightly():
    spec = yaml.safe_load((REPO / "infra" / "prefect" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert deployments["stage1"]["entrypoint"] == "flows/stage1.py:stage1_flow"
    assert deployments["stage1-round"]["entrypoint"] == "flows/stage1.py:stage1_round_flow"
    for name in ("stage1", "stage1-round"):
        assert deployments[name]["work_pool"]["name"] == "synpref"
        assert deployments[name]["parameters"] == {} and deployments[name]["schedules"] == []
        assert deployments[name]["description"]
    assert deployments["stage2"]["entrypoint"] == "flows/stage2.py:stage2_flow"
    assert deployments["stage2"]["schedules"] == [
        {"cron": "0 2 * * *", "timezone": "UTC", "active": True}
    ]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_stage1_round_deployment_runs_one_round_from_the_api(tmp_path, prefect_stack):
    api, env = prefect_stack["api"], prefect_stack["env"]
    config = tiny_stage1_config(tmp_path / "run", tmp_path / "models")
    parameters = {"config": config.model_dump(mode="json")}
    deploy("stage1-round", env, parameters)
    deployment = api_call("GET", f"{api}/deployments/name/stage1-round/stage1-round").json()
    assert deployment["entrypoint"] == "flows/stage1.py:stage1_round_flow"
    assert deployment["work_pool_name"] == "synpref"
    assert not deployment["paused"] and deployment["schedules"] == []
    assert deployment["parameters"] == parameters

    created = api_call(
        "POST", f"{api}/deployments/{deployment['id']}/create_flow_run", json={}
    )  # Quick run: the deployment's parameters
    assert created.status_code == 201, created.text
    flow_run = wait_for_flow_run(api, created.json()["id"], RUN_TIMEOUT_S)
    assert flow_run["state_type"] == "COMPLETED", (
        f"{flow_run['state']}\n{prefect_stack['worker'].tail()}"
    )
    assert flow_run["state_name"] == "Completed"
    assert flow_run["deployment_id"] == deployment["id"]
    assert flow_run["parameters"] == parameters

    out = Path(config.out)
    record = out / "rounds" / "round-001.json"
    assert record.exists(), sorted(p.name for p in out.iterdir())
    assert json.loads(record.read_text())["round"] == 1
    assert not (out / "rounds" / "round-002.json").exists()  # one round, not config.rounds (2)
    summary = json.loads((out / "stage1.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1]
