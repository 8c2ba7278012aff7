"""Interrupted ingest runs: SIGKILL leaves no worker behind, Ctrl-C exits 130 with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.ingest_helpers import write_hh_jsonl

SYNPREF = [sys.executable, "-m", "synpref_core.cli"]


def _start(tmp_path: Path, out: Path) -> subprocess.Popen:
    """A local ingest with 2 worker processes over many small shards (seconds of work)."""
    source = write_hh_jsonl(tmp_path, copies=12)
    config = {
        "sources": [{"format": "hh-rlhf", "paths": [str(source)]}],
        "out": str(out),
        "shard_bytes": 2**16,
    }
    (tmp_path / "ingest.yaml").write_text(yaml.safe_dump(config))
    cmd = [*SYNPREF, "ingest", "--config", str(tmp_path / "ingest.yaml"), "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _wait_for_markers(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    markers = out / "_stages" / "normalize" / "_markers"
    deadline = time.monotonic() + timeout
    while not (markers.exists() and len(list(markers.iterdir())) >= 2):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.05)


def _markers(out: Path) -> set[str]:
    return {str(p) for p in out.rglob("_markers/*.json")}


def test_sigkill_leaves_no_worker_writing_into_the_output(tmp_path):
    out = tmp_path / "out"
    proc = _start(tmp_path, out)
    _wait_for_markers(out, proc)
    family = psutil.Process(proc.pid).children(recursive=True)
    assert family, "the run should have worker processes"
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, [p.cmdline() for p in alive]
    before = _markers(out)
    time.sleep(1.0)
    assert _markers(out) == before  # nothing writes after the run died


@pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals")
def test_ctrl_c_exits_130_with_one_line_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "out"
    proc = _start(tmp_path, out)
    _wait_for_markers(out, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    message = [line for line in lines if "interrupted" in line]
    assert len(message) == 1 and "run the same command again to resume" in message[0]
    assert "Traceback" not in stderr.decode()
    kept = _markers(out)
    assert kept

    rerun = _start(tmp_path, out)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr.decode()
    assert (out / "manifest.json").exists()
