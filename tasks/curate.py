"""Prefect task shells of Stage 2 curation: score pairs with an RM, pick the pairs the best RM
doubts, apply the consistency filter, and the v1 selection steps. Each returns a manifest URI."""

from __future__ import annotations

from prefect import task

from synpref_core.config import ExecutorConfig
from synpref_core.curation.consistency import ConsistencyConfig, ConsistencyStage, NeedsJudgeStage
from synpref_core.curation.sets import SetConfig, SetStage
from synpref_core.curation.v1select import (
    RmAgreesConfig,
    RmAgreesStage,
    TopFractionConfig,
    TopFractionStage,
)
from synpref_core.executors import run
from synpref_core.rm.scoring import ScoreConfig, ScoreStage


@task(name="score-pairs")
def score_pairs(config: ScoreConfig, executor: ExecutorConfig) -> str:
    """r_chosen, r_rejected and p = σ(r_chosen − r_rejected) of every pair (Ray actors)."""
    return run(ScoreStage(config), executor)


@task(name="needs-judge")
def needs_judge(config: RmAgreesConfig, executor: ExecutorConfig) -> str:
    """The pairs the best RM does not back (p ≤ 0.5 + δ): the judges' share."""
    return run(NeedsJudgeStage(config), executor)


@task(name="consistency-filter")
def consistency(config: ConsistencyConfig, executor: ExecutorConfig) -> str:
    """Keep, flip or discard every pair (DESIGN §3), with the reason and the evidence."""
    return run(ConsistencyStage(config), executor)


@task(name="top-fraction")
def top_fraction(config: TopFractionConfig, executor: ExecutorConfig) -> str:
    """v1: the top fraction of each category by mean reward."""
    return run(TopFractionStage(config), executor)


@task(name="rm-agrees")
def rm_agrees(config: RmAgreesConfig, executor: ExecutorConfig) -> str:
    """v1: keep the pairs the RM already ranks right."""
    return run(RmAgreesStage(config), executor)


@task(name="build-set")
def build_set(config: SetConfig, executor: ExecutorConfig) -> str:
    """A Stage 1 set: the union of pair stages in precedence order, less what humans decided."""
    return run(SetStage(config), executor)
