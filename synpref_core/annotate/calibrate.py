"""Judge calibration: how often each judge model, and the ensemble, agree with the human
verdicts of gold pairs (DESIGN §2 step 5: "judge accuracy against human gold").

A gold pair's stored ``chosen`` is the side humans preferred, so a model is right on a pair when
its self-consistency vote is ``chosen`` and the ensemble is right when the outcome is ``agree``.
Undecided votes and errors count as not right (accuracy is over every pair judged) and are
reported beside it, as ``decided`` (the share with a vote).

:func:`calibration_table` gives one row per (judge, slice): ``all``, each task category and each
objectivity value of the gold pairs (the paper reports objective vs subjective: 93% / 84% with
human guidance and retrieval). :func:`calibration_metrics` flattens it for MLflow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from synpref_core.annotate.stages import JudgeConfig, JudgeStage
from synpref_core.config import ExecutorConfig

ENSEMBLE = "ensemble"
CALIBRATION_COLUMNS = ("judge", "slice", "value", "pairs", "right", "decided", "accuracy")


def vote_rows(judged: pa.Table) -> pl.DataFrame:
    """Long form: one row per (pair, judge) with ``right`` and ``decided``, the ensemble's too."""
    rows = []
    for pair_id, outcome, model_votes in zip(
        judged["pair_id"].to_pylist(),
        judged["outcome"].to_pylist(),
        judged["model_votes"].to_pylist(),
        strict=True,
    ):
        for model, side in model_votes or []:
            rows.append((pair_id, model, side == "chosen", side in ("chosen", "rejected")))
        rows.append((pair_id, ENSEMBLE, outcome == "agree", outcome in ("agree", "disagree")))
    return pl.DataFrame(rows, schema=["pair_id", "judge", "right", "decided"], orient="row")


def attribute_values(gold: pa.Table) -> pl.DataFrame:
    """pair_id, category, objectivity of the gold pairs ("unknown" where not set)."""
    frame = pl.from_arrow(gold.select(["pair_id", "task_category", "objectivity"]))
    return frame.select(
        "pair_id",
        pl.col("task_category").struct.field("value").fill_null("unknown").alias("category"),
        pl.col("objectivity").struct.field("value").fill_null("unknown").alias("objectivity"),
    )


def calibration_table(judged: pa.Table, gold: pa.Table) -> pl.DataFrame:
    """Accuracy against the human verdicts per judge, overall, per category and objectivity."""
    votes = vote_rows(judged).join(attribute_values(gold), on="pair_id", how="left")
    votes = votes.with_columns(pl.col("category", "objectivity").fill_null("unknown"))
    parts = [votes.with_columns(pl.lit("all").alias("slice"), pl.lit("all").alias("value"))]
    for column in ("category", "objectivity"):
        parts.append(
            votes.with_columns(pl.lit(column).alias("slice"), pl.col(column).alias("value"))
        )
    return (
        pl.concat(parts)
        .group_by("judge", "slice", "value")
        .agg(
            pl.len().alias("pairs"),
            pl.col("right").sum().alias("right"),
            pl.col("decided").mean().alias("decided"),
        )
        .with_columns((pl.col("right") / pl.col("pairs")).alias("accuracy"))
        .sort("judge", "slice", "value")
        .select(CALIBRATION_COLUMNS)
    )


def metric_name(*parts: str) -> str:
    """An MLflow metric name: characters MLflow refuses ("&", ",") become "_"."""
    return ".".join(re.sub(r"[^A-Za-z0-9_\-/ ]", "_", p) for p in parts)


def calibration_metrics(table: pl.DataFrame, prefix: str = "calibration") -> dict[str, float]:
    metrics: dict[str, float] = {}
    for row in table.iter_rows(named=True):
        where = (
            [row["judge"]] if row["slice"] == "all" else [row["judge"], row["slice"], row["value"]]
        )
        metrics[metric_name(prefix, *where, "accuracy")] = float(row["accuracy"])
        metrics[metric_name(prefix, *where, "decided")] = float(row["decided"])
        metrics[metric_name(prefix, *where, "pairs")] = float(row["pairs"])
    return metrics


@dataclass(frozen=True)
class Calibration:
    judged: str  # manifest URI of the judge stage over the gold pairs
    table: pl.DataFrame  # calibration_table
    metrics: dict[str, float]


def calibrate_judges(config: JudgeConfig, executor: ExecutorConfig | None = None) -> Calibration:
    """Judge the gold pairs of ``config.pairs`` (few-shot from the store: each pair's nearest
    *other* gold pairs) and measure every judge against their human verdicts."""
    from synpref_core.executors import run
    from synpref_core.stages import read_stage

    judged = run(JudgeStage(config), executor or ExecutorConfig(kind="local"), progress=False)
    judgements = read_stage(judged)
    gold = read_stage(config.pairs, columns=["pair_id", "task_category", "objectivity"])
    table = calibration_table(judgements, gold)
    return Calibration(judged, table, calibration_metrics(table))
