"""Shared test setup: offline, quiet services, and small real inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs for the whole session, started as the flows start it
    (loopback only, token auth on)."""
    import ray

    from synpref_core.config import ExecutorConfig
    from synpref_core.executors import ensure_ray

    ensure_ray(ExecutorConfig(kind="ray", ray_num_cpus=2))
    yield ray
    ray.shutdown()
