"""Prefect task shells of reward-model training: train, register the best model."""

from __future__ import annotations

from prefect import task

from synpref_core.config import ExecutorConfig, TrackingConfig
from synpref_core.rm.registry import register_model
from synpref_core.rm.train import TrainConfig, TrainResult, train_reward_model


@task(name="train-rm")
def train_rm(config: TrainConfig, executor: ExecutorConfig) -> TrainResult:
    """Train on Ray Train workers; a re-run with the same config resumes from its checkpoint."""
    return train_reward_model(config, executor)


@task(name="register-rm")
def register_rm(
    result: TrainResult, config: TrainConfig, tracking_config: TrackingConfig, name: str
) -> int:
    """Log the best model to the active MLflow run and register it; returns the version."""
    return register_model(
        result,
        config,
        config.train_manifest,
        tracking_config,
        name=name,
        gold_manifest=config.gold_manifest,
    )
