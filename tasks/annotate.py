"""Prefect task shells of LLM annotation: gather candidate pairs, draft attributes, judge,
calibrate the judges on gold. Each returns a manifest URI (or the calibration table)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from synpref_core import tracking
from synpref_core.annotate.calibrate import calibrate_judges
from synpref_core.annotate.stages import AttributeConfig, AttributeStage, JudgeConfig, JudgeStage
from synpref_core.config import ExecutorConfig
from synpref_core.curation.gather import GatherConfig, GatherStage
from synpref_core.executors import run


@task(name="gather-candidates")
def gather(config: GatherConfig, executor: ExecutorConfig) -> str:
    """The pair rows of a round's candidate ids."""
    return run(GatherStage(config), executor)


@task(name="draft-attributes")
def draft_attributes(config: AttributeConfig, executor: ExecutorConfig) -> str:
    """Attributes for the pairs lacking them (human values kept); answers cached."""
    return run(AttributeStage(config), executor)


@task(name="judge-pairs")
def judge(config: JudgeConfig, executor: ExecutorConfig) -> str:
    """Preference-aware ensemble judging with gold few-shot examples; answers cached."""
    return run(JudgeStage(config), executor)


@task(name="calibrate-judges")
def calibrate(config: JudgeConfig, executor: ExecutorConfig) -> list[dict]:
    """Judge gold pairs, log each judge's agreement with the humans to MLflow (metrics and a
    table artifact) and Prefect (a table artifact); returns the table's rows."""
    result = calibrate_judges(config, executor)
    tracking.log_metrics(result.metrics)
    rows = result.table.to_dicts()
    tracking.log_table(rows, "judge_calibration.json")
    create_table_artifact(
        key="judge-calibration",
        table=rows,
        description="Agreement of each judge and the ensemble with human gold verdicts",
    )
    return rows
