"""Prefect task shell of pair selection (status, source, hash split): returns a manifest URI."""

from __future__ import annotations

from prefect import task

from synpref_core.config import ExecutorConfig
from synpref_core.curation.select import SelectConfig, SelectStage
from synpref_core.executors import run


@task(name="select-pairs")
def select_pairs(config: SelectConfig, executor: ExecutorConfig) -> str:
    """Write the selected pairs as a stage (skips finished shards); returns its manifest URI."""
    return run(SelectStage(config), executor)
