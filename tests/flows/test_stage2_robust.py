"""Stage 2 survives what production does to it, end to end on small real data (issue 12).

Every run here is ``python -m flows.stage2 --config CFG.yaml`` in its own process group, as a
user or cron starts it (Prefect's temporary server under a private PREFECT_HOME), over D_wild in
4 shards (200 hh-rlhf records), both tiny RMs given so nothing trains, the two RMs as the local
judges. One clean run on the local executor is the reference (module fixture); it proves:

- ``test_sigkill_midway_then_a_rerun_gives_the_clean_output``: a run SIGKILLed (the whole
  process group) while the gold RM's scoring is part done leaves finished shards, no manifest
  and a stale output lock of the dead pid; the re-run takes the lock over, keeps the finished
  shards (their markers untouched) and writes the same curated pairs as the clean run: same
  ids, same statuses and evidence, no duplicate pair_id, equal manifest counts.
- ``test_a_ray_cluster_gives_the_local_output``: a real two-node Ray cluster on this machine (a
  head from ``ray start --head`` with 0 CPUs, as infra/ray's specs have it, and a worker node
  joined with ``ray start --address``: separate processes, token auth on) reached through
  ``runtime.executor.ray_address``: every shard runs on the joined node, and the curated pairs
  equal the clean local run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from synpref_core.io.lock import LOCK_FILE
from synpref_core.stages import load_manifest, read_stage
from tests.conftest import REPO
from tests.flow_helpers import start_flow, subprocess_env, wild_stage2_config
from tests.prefect_helpers import free_port

RUN_TIMEOUT_S = 900  # one flow run: ~2 min on 2 busy CPUs
RAY = str(REPO / ".venv" / "bin" / "ray")


_env = subprocess_env


def _start(config, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    return start_flow("stage2", config, env)


def _complete(config, env: dict[str, str]) -> None:
    proc, log = _start(config, env)
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc == 0, log.read_text(errors="replace")[-6000:]


def _curated(config) -> list[dict]:
    """The curated rows by pair_id, less run_id (a hash of the stage's config, which names the
    run's output directory)."""
    rows = read_stage(str(Path(config.out) / "curated")).drop_columns(["run_id"]).to_pylist()
    return sorted(rows, key=lambda r: r["pair_id"])


def _assert_same_output(config, reference) -> None:
    rows, expected = _curated(config), _curated(reference)
    assert len({r["pair_id"] for r in rows}) == len(rows), "duplicate pair_id"
    assert [r["pair_id"] for r in rows] == [r["pair_id"] for r in expected]
    assert [r["status"] for r in rows] == [r["status"] for r in expected]
    assert rows == expected
    for stage in ("curated", "keep"):
        got = load_manifest(str(Path(config.out) / stage))
        want = load_manifest(str(Path(reference.out) / stage))
        assert (got.rows, got.num_shards, got.counts) == (want.rows, want.num_shards, want.counts)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """The input file and both tiny RMs, shared by every run of this module."""
    return tmp_path_factory.mktemp("stage2-models")


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, models):
    """The reference: one uninterrupted run on the local executor."""
    root = tmp_path_factory.mktemp("stage2-clean")
    config = wild_stage2_config(root, models)
    _complete(config, _env(root))
    assert load_manifest(str(Path(config.out) / "curated")).rows > 0
    return config


def _markers(stage: Path) -> list[Path]:
    return sorted((stage / "_markers").glob("part-*.json"))  # not a .tmp-* being written


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_midway_then_a_rerun_gives_the_clean_output(tmp_path, models, clean_run):
    config = wild_stage2_config(tmp_path, models)
    env = _env(tmp_path)
    scores_gold = Path(config.out) / "scores-gold"
    proc, log = _start(config, env)
    try:
        # Midway: the gold RM has scored a first shard of D_wild's 4 (seconds apart).
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not _markers(scores_gold):
            assert proc.poll() is None, log.read_text(errors="replace")[-6000:]
            assert time.monotonic() < deadline, "no gold score shard finished in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the flow, Prefect's temporary server, all of it
        proc.wait()

    shards = load_manifest(str(Path(config.out) / "wild")).num_shards
    finished = _markers(scores_gold)
    assert 1 <= len(finished) < shards == 4
    assert not (scores_gold / "manifest.json").exists()
    assert not (Path(config.out) / "curated").exists()
    lock = scores_gold / LOCK_FILE
    assert json.loads(lock.read_text())["pid"] == proc.pid  # stale: its holder is dead
    touched = {p: p.stat().st_mtime_ns for p in finished}

    _complete(config, env)
    assert not lock.exists()
    assert {p: p.stat().st_mtime_ns for p in finished} == touched, "finished shards redone"
    assert len(_markers(scores_gold)) == shards
    _assert_same_output(config, clean_run)


@pytest.fixture
def ray_cluster(tmp_path) -> Iterator[tuple[str, dict[str, str]]]:
    """A two-node Ray cluster of separate processes: a head (0 CPUs) and a joined worker node
    (2 CPUs), token auth on. Yields its address and the environment a driver needs. Each
    ``ray start`` runs in a session of its own, which its daemons and their workers keep:
    teardown kills those sessions only (``ray stop`` would stop every Ray on this machine)."""
    # Ray's socket paths must fit in 107 bytes: a short temp dir, not tmp_path.
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    common = ["--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats"]
    # Free ports for what Ray otherwise binds at fixed defaults (the client server's 10001, the
    # dashboard's 8265, each node's agent on 52365), which another Ray here may hold.
    head = [f"--port={port}", f"--ray-client-server-port={free_port()}"]
    head += [f"--dashboard-port={free_port()}", "--include-dashboard=false"]
    starts = [
        [RAY, "start", "--head", *head, "--num-cpus=0"],
        [RAY, "start", f"--address={address}", "--num-cpus=2"],
    ]
    sessions: list[int] = []
    try:
        for command in starts:
            command += [*common, f"--dashboard-agent-listen-port={free_port()}"]
            start = subprocess.Popen(
                command, cwd=REPO, env=env, start_new_session=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            sessions.append(start.pid)
            output, _ = start.communicate(timeout=300)
            assert start.returncode == 0, output
        _wait_for_nodes(address, env, 2)
        yield address, env
    finally:
        for session in sessions:
            _kill_session(session)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(address: str, env: dict[str, str], nodes: int) -> None:
    """Until ``ray status`` (read from the GCS) lists ``nodes`` active nodes."""
    deadline = time.monotonic() + 180
    while True:
        status = subprocess.run(
            [RAY, "status", f"--address={address}"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        if status.returncode == 0 and active.count("node_") == nodes:
            return
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(2)


def _kill_session(session: int) -> None:
    """Kill every process of a session: a ``ray start``'s daemons, and the Ray workers their
    raylet started (each in a process group of its own, in the same session)."""
    import psutil

    def members() -> list[psutil.Process]:
        found = []
        for pid in psutil.pids():
            try:
                if os.getsid(pid) == session:
                    found.append(psutil.Process(pid))
            except (OSError, psutil.Error):  # gone meanwhile
                continue
        return found

    for process in members():
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(members(), timeout=15)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_ray_cluster_gives_the_local_output(tmp_path, models, clean_run, ray_cluster):
    from synpref_core.config import ExecutorConfig

    address, env = ray_cluster
    config = wild_stage2_config(tmp_path, models)
    executor = ExecutorConfig(kind="ray", ray_address=address)
    config = config.model_copy(
        update={"runtime": config.runtime.model_copy(update={"executor": executor})}
    )
    _complete(config, env)
    log = (tmp_path / "stage2.log").read_text(errors="replace")
    assert "Connected to Ray cluster" in log  # the configured cluster, not a local Ray
    _assert_same_output(config, clean_run)
