"""`make ui` (infra/prefect/ui.sh): a local Prefect server, a worker on the `synpref` pool and
every deployment of prefect.yaml registered, in one command; Ctrl-C stops both.

The live test runs the script as `make ui` does, on a free port with its own PREFECT_HOME, waits
for its "Prefect UI:" line, checks through the REST API that the server is healthy, that the
deployments (stage1-round among them) are registered and the worker is polling the pool, then
sends SIGINT (Ctrl-C) and checks that the script exits and its server and worker are gone.
About a minute on 2 busy CPUs (most of it `prefect deploy --all` importing every flow).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.prefect_helpers import api_call, free_port

SCRIPT = REPO / "infra" / "prefect" / "ui.sh"


def test_ui_script_is_valid_bash_and_the_make_target_runs_it():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    make = subprocess.run(
        ["make", "-n", "ui"], cwd=REPO, capture_output=True, text=True, env={**os.environ}
    )
    assert make.returncode == 0, make.stderr
    assert "bash infra/prefect/ui.sh" in make.stdout


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_ui_serves_the_deployments_and_ctrl_c_stops_server_and_worker(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "SYNPREF_UI_PORT": str(port),
        "SYNPREF_UI_LOGS": str(tmp_path / "logs"),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PYTHONPATH": str(REPO),
    }
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "ui.log"
    with log.open("wb") as handle:
        ui = subprocess.Popen(
            ["bash", str(SCRIPT)], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    children: list[int] = []
    try:
        deadline = time.monotonic() + 420
        while "Prefect UI:" not in log.read_text():
            assert ui.poll() is None, f"ui.sh exited ({ui.returncode}):\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not up in 420 s:\n{log.read_text()}"
            time.sleep(1)
        children = _children(ui.pid)
        assert len(children) == 2, children  # the server and the worker, each its own group
        assert all(os.getpgid(child) == child for child in children)
        text = log.read_text()
        assert f"http://127.0.0.1:{port}" in text and "stage1-round" in text

        assert httpx.get(f"{api}/health", timeout=30).status_code == 200
        deployments = api_call("POST", f"{api}/deployments/filter", json={}).json()
        by_name = {d["name"]: d for d in deployments}
        assert {"stage1", "stage1-round", "stage2", "retrieve"} <= set(by_name)
        assert by_name["stage1-round"]["entrypoint"] == "flows/stage1.py:stage1_round_flow"
        assert by_name["stage1-round"]["work_pool_name"] == "synpref"
        workers = f"{api}/work_pools/synpref/workers/filter"
        deadline = time.monotonic() + 60  # the worker registers itself on its first poll
        while not api_call("POST", workers, json={}).json():
            assert time.monotonic() < deadline, (tmp_path / "logs" / "worker.log").read_text()
            time.sleep(2)

        ui.send_signal(signal.SIGINT)  # Ctrl-C
        assert ui.wait(timeout=120) == 130
        assert "stopped the Prefect server and worker" in log.read_text()
        assert not [child for child in children if _group_alive(child)]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{api}/health", timeout=5)
    finally:
        if ui.poll() is None:
            ui.terminate()  # the script's trap stops its children
            try:
                ui.wait(timeout=60)
            except subprocess.TimeoutExpired:
                ui.kill()
        for child in children:
            if _group_alive(child):
                os.killpg(child, signal.SIGKILL)
