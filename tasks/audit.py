"""Prefect task shells of Stage 2's noise-injection audit: inject seeded label noise into D_wild
(returns a manifest URI), and audit Stage 2's curated output against it (MLflow metrics, a JSON
table artifact in the active run, a Prefect table artifact)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from synpref_core import tracking
from synpref_core.config import ExecutorConfig
from synpref_core.curation.audit import (
    AuditResult,
    InjectNoiseConfig,
    InjectNoiseStage,
    audit_table,
)
from synpref_core.executors import run
from synpref_core.stages import read_stage


@task(name="inject-noise")
def inject_noise(config: InjectNoiseConfig, executor: ExecutorConfig) -> str:
    """D_wild with a seeded share of pairs flipped and marked (``meta.injected``)."""
    return run(InjectNoiseStage(config), executor)


@task(name="audit-stage2")
def audit_stage2(noisy: str, curated: str, seed: int = 0) -> AuditResult:
    """Join the curated rows back to the noisy pairs, measure, and record the audit."""
    result = audit_table(
        read_stage(noisy, ["pair_id", "meta"]),
        read_stage(curated, ["pair_id", "parent_id", "status"]),
        seed,
    )
    tracking.log_metrics(result.flat())
    tracking.log_table(result.rows(), "stage2_audit.json")
    create_table_artifact(
        key="stage2-audit",
        table=result.rows(),
        description="Noise-injection audit: shares with 95% bootstrap intervals",
    )
    return result
