"""A real local Prefect server and worker for tests, started as users start them
(infra/prefect/server.sh, infra/prefect/worker.sh), and the deployments of
infra/prefect/prefect.yaml registered on it with `prefect deploy`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import REPO

TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
API_RETRY_S = 120  # how long a request is repeated while the server answers 503


def api_call(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request to the Prefect server's REST API, repeated while the server answers 503:
    its SQLite database was locked by another writer (the worker, the scheduler), and it asks
    the client to try again after ``Retry-After`` seconds, as Prefect's own client and the UI
    do. Any other answer is returned as it is."""
    kwargs.setdefault("timeout", 30)
    deadline = time.monotonic() + API_RETRY_S
    while True:
        response = httpx.request(method, url, **kwargs)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(float(response.headers.get("Retry-After", 2)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A subprocess in its own process group, its output in a log file; stopped with its
    children (a worker's flow-run subprocesses) at teardown."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.handle = log.open("wb")
        self.proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=self.handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.handle.close()


def prefect_stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A real local Prefect server on a free port (own PREFECT_HOME) and a process worker on the
    `synpref` pool; yields the API and UI URLs, the environment to use them and the worker."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PYTHONPATH": str(REPO),  # flow runs import this checkout's code
        "SYNPREF_REPO": str(REPO),
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    started: list[Process] = []
    try:
        server = Process(
            ["bash", "infra/prefect/server.sh", "--host", "127.0.0.1", "--port", str(port)],
            env,
            tmp_path / "server.log",
        )
        started.append(server)
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.proc.poll() is None, f"server exited:\n{server.tail()}"
            assert time.monotonic() < deadline, f"server not up in 180 s:\n{server.tail()}"
            time.sleep(1)
        worker = Process(["bash", "infra/prefect/worker.sh"], env, tmp_path / "worker.log")
        started.append(worker)
        deadline = time.monotonic() + 120
        while httpx.get(f"{api}/work_pools/synpref", timeout=10).status_code != 200:
            assert worker.proc.poll() is None, f"worker exited:\n{worker.tail()}"
            assert time.monotonic() < deadline, f"no `synpref` pool in 120 s:\n{worker.tail()}"
            time.sleep(1)
        yield {
            "api": api, "ui": api.removesuffix("/api"), "env": env, "server": server,
            "worker": worker,
        }  # fmt: skip
    finally:
        for process in reversed(started):
            process.stop()


def deploy(name: str, env: dict[str, str], params: dict[str, Any] | None = None) -> None:
    """`prefect deploy --prefect-file infra/prefect/prefect.yaml --name NAME` against the server
    of ``env``, with ``params`` as the deployment's parameters when given."""
    command = [
        str(REPO / ".venv" / "bin" / "prefect"),
        "--no-prompt",
        "deploy",
        "--prefect-file",
        "infra/prefect/prefect.yaml",
        "--name",
        name,
    ]
    if params is not None:
        command += ["--params", json.dumps(params)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


def wait_for_flow_run(api: str, flow_run_id: str, timeout_s: float) -> dict[str, Any]:
    """The flow run once it reaches a terminal state (polled every 3 s), failing after
    ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        flow_run = api_call("GET", f"{api}/flow_runs/{flow_run_id}").json()
        if flow_run["state_type"] in TERMINAL:
            return flow_run
        assert time.monotonic() < deadline, f"{flow_run['state_type']} after {timeout_s} s"
        time.sleep(3)
