"""Prefect task shells of the ingest stages: run one stage, return its manifest URI."""

from __future__ import annotations

from prefect import task

from synpref_core.config import ExecutorConfig, IngestConfig
from synpref_core.executors import run
from synpref_core.ingest.pipeline import DedupStage, NormalizeStage


@task(name="ingest-normalize")
def normalize(config: IngestConfig, executor: ExecutorConfig) -> str:
    """Read, validate and decontaminate every source into shards (skips finished shards)."""
    return run(NormalizeStage(config), executor)


@task(name="ingest-dedup")
def dedup(config: IngestConfig, executor: ExecutorConfig, normalized: str) -> str:
    """Exact dedup across all shards of ``normalized``; returns the final manifest URI."""
    return run(DedupStage(config, normalized), executor)
