"""The embedded default listens on loopback only: a flow run with no Prefect server and no
cluster configured starts Prefect's temporary server and a local Ray, and none of the sockets
they open (Ray's GCS, raylet, object manager, agents, workers; Prefect's API) accepts
connections from the network."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import textwrap

import psutil
import pytest

from tests.conftest import REPO

# Runs in a fresh process (the session's Ray fixture would otherwise be the one reused) with
# no PREFECT_API_URL, so the flow call starts Prefect's temporary server, as `python -m flows.x`.
CHILD = textwrap.dedent(
    """
    import os, sys

    import ray
    from prefect import flow

    from synpref_core.config import ExecutorConfig
    from synpref_core.executors import ensure_ray


    @ray.remote(num_cpus=0)
    class Probe:
        def pid(self):
            return os.getpid()


    @flow
    def embedded_default():
        ensure_ray(ExecutorConfig(kind="ray", ray_num_cpus=1))
        probe = Probe.remote()  # a worker process, which runs its own gRPC server
        ray.get(probe.pid.remote())
        print("ready", os.environ.get("RAY_AUTH_MODE"), flush=True)
        sys.stdin.readline()  # the test inspects the sockets until it closes stdin


    embedded_default()
    ray.shutdown()
    """
)


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1, a dual-stack socket on loopback
    return address.is_loopback


def _listening(root: psutil.Process) -> list[tuple[str, int, str]]:
    """(ip, port, process) for every listening TCP socket of ``root`` and its descendants."""
    found = []
    for process in [root, *root.children(recursive=True)]:
        try:
            name = " ".join(process.cmdline())[:120]
            sockets = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:  # a short-lived helper that exited meanwhile
            continue
        found += [(s.laddr.ip, s.laddr.port, name) for s in sockets if s.status == "LISTEN"]
    return found


@pytest.mark.slow
def test_embedded_default_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "RAY_ADDRESS"))}
    env.update(
        PYTHONPATH=str(REPO),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        RAY_USAGE_STATS_ENABLED="0",
    )
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = []
        while not (line := child.stdout.readline()).startswith("ready") and line:
            lines.append(line)
        assert line.startswith("ready"), "".join(lines)
        listening = _listening(psutil.Process(child.pid))
        child.stdin.close()
        assert child.wait(timeout=120) == 0
    finally:
        child.kill()
        child.wait()

    exposed = [entry for entry in listening if not _is_loopback(entry[0])]
    assert not exposed, "\n".join(f"{ip}:{port}  {name}" for ip, port, name in exposed)
    names = " ".join(name for _, _, name in listening)
    assert "gcs_server" in names and "raylet" in names  # local Ray was measured
    assert "uvicorn" in names  # and Prefect's temporary server
    assert line.split()[1] == "token"  # Ray's token auth stayed on for the local cluster
