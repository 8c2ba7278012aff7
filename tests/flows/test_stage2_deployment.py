"""The nightly `stage2` deployment on a real local Prefect server (issue 12).

A server (infra/prefect/server.sh) and a worker on the `synpref` pool (infra/prefect/worker.sh)
are started as users start them; `prefect deploy --prefect-file infra/prefect/prefect.yaml --name
stage2` registers the deployment. The test proves, through the server's REST API, that the
deployment is there with its cron schedule (`0 2 * * *`, UTC) active and not paused; that a run
created from it through the API with a small config as its parameters (D_wild in 4 shards, both
tiny RMs given, local executor) is picked up by the worker, completes, and writes the curated
pairs: every D_wild pair once, kept, flipped or discarded; and that the schedule is live: the
server's scheduler service has queued the nightly runs, each due at 02:00 UTC.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from synpref_core.stages import load_manifest
from tests.flow_helpers import wild_stage2_config
from tests.prefect_helpers import api_call, deploy, wait_for_flow_run

RUN_TIMEOUT_S = 900  # the run itself takes ~2 min on 2 busy CPUs


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_stage2_deploys_with_its_schedule_and_a_run_from_the_api_completes(tmp_path, prefect_stack):
    api, env = prefect_stack["api"], prefect_stack["env"]
    deploy("stage2", env)
    deployment = api_call("GET", f"{api}/deployments/name/stage2/stage2").json()
    assert deployment["entrypoint"] == "flows/stage2.py:stage2_flow"
    assert deployment["work_pool_name"] == "synpref"
    assert not deployment["paused"]
    schedules = [(s["schedule"], s["active"]) for s in deployment["schedules"]]
    assert len(schedules) == 1
    schedule, active = schedules[0]
    assert (schedule["cron"], schedule["timezone"], active) == ("0 2 * * *", "UTC", True)

    config = wild_stage2_config(tmp_path / "run", tmp_path / "models")
    created = api_call(
        "POST",
        f"{api}/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": {"config": config.model_dump(mode="json")}},
    )
    assert created.status_code == 201, created.text
    flow_run = wait_for_flow_run(api, created.json()["id"], RUN_TIMEOUT_S)
    assert flow_run["state_type"] == "COMPLETED", (
        f"{flow_run['state']}\n{prefect_stack['worker'].tail()}"
    )
    assert flow_run["deployment_id"] == deployment["id"]

    out = Path(config.out)
    curated, wild = load_manifest(str(out / "curated")), load_manifest(str(out / "wild"))
    assert curated.rows == wild.rows > 0 and wild.num_shards == 4
    assert curated.counts["kept"] + curated.counts["flipped"] + curated.counts["discarded"] == (
        wild.rows
    )
    assert (out / "keep" / "manifest.json").exists()

    # The schedule is live: the server's scheduler has queued the next nightly runs at 02:00 UTC.
    nightly = _scheduled_runs(api, deployment["id"])
    assert nightly, f"no scheduled run of the cron schedule:\n{prefect_stack['server'].tail()}"
    for run in nightly:
        start = datetime.fromisoformat(run["expected_start_time"]).astimezone(UTC)
        assert (start.hour, start.minute, start.second) == (2, 0, 0), start
        assert run["auto_scheduled"] and run["state_type"] == "SCHEDULED"


def _scheduled_runs(api: str, deployment_id: str) -> list[dict]:
    """The deployment's auto-scheduled runs, once the scheduler service has made some
    (it looks at new deployments every few seconds; polled for up to 3 minutes)."""
    query = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
    }
    deadline = time.monotonic() + 180
    while True:
        runs = api_call("POST", f"{api}/flow_runs/filter", json=query).json()
        if runs or time.monotonic() > deadline:
            return runs
        time.sleep(3)
