"""What a Stage 1 run and the demo record about themselves: typed, JSON on disk, read by the report.

The ``stage1`` flow writes one :class:`RoundRecord` per finished round to
``<out>/rounds/round-NNN.json`` (the resume point: a re-run starts after the last record) and the
whole :class:`Stage1Summary` to ``<out>/stage1.json``; the demo adds Stage 2, the audit, the final
evaluation and the measured comparison in ``<out>/demo.json`` (:class:`DemoSummary`).
``synpref report`` renders either file as self-contained HTML and Markdown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field


class RoundRecord(BaseModel):
    """One finished Stage 1 round (DESIGN §2 step 5)."""

    round: int
    chain: str = Field("", description="Hash of the config and the round before (resume check).")
    rm_dir: str = Field(description="The round's best checkpoint.")
    rm_version: str | None = Field(None, description="Its registered MLflow model version.")
    mlflow_run_id: str | None = Field(None, description="The round's child run.")
    gold_accuracy: float | None = Field(None, description="Best RM on D_gold (share right).")
    gold_accuracy_by_category: dict[str, float] = Field(default_factory=dict)
    sizes: dict[str, int] = Field(
        default_factory=dict,
        description="Set sizes after the round: gold, silver, flip_candidates, undecided, "
        "human_gold (pairs humans decided so far), pool.",
    )
    retrieval: dict[str, int] = Field(
        default_factory=dict,
        description="queries, queries_wrong, candidates, candidates_k<k>, duplicates_removed.",
    )
    judge: dict[str, int] = Field(
        default_factory=dict,
        description="Candidates by outcome: agree, disagree, undecided, error.",
    )
    judge_vs_gold: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Calibration rows (judge, slice, pairs, decided, accuracy) against human gold.",
    )
    human: dict[str, int] = Field(
        default_factory=dict,
        description="items, submitted, gold, swapped, discarded, pending of the round's batch.",
    )
    manifests: dict[str, str] = Field(default_factory=dict, description="name → manifest URI.")
    seconds: float = 0.0
    timings: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds per step: train, store, score_gold, retrieve, annotate, human, sets.",
    )


class Stage1Summary(BaseModel):
    """A Stage 1 run: its rounds in order and where its sets are."""

    mlflow_run_id: str | None = None
    rounds: list[RoundRecord] = Field(default_factory=list)
    gold: str | None = Field(None, description="D_gold after the last round (manifest URI).")
    silver: str | None = Field(None, description="D_silver after the last round.")
    best_rm: str | None = Field(None, description="The last round's best RM directory.")


class StepTime(BaseModel):
    step: str
    seconds: float
    note: str = ""


class DemoSummary(BaseModel):
    """The whole pipeline's record (``make demo``)."""

    stage1: Stage1Summary
    stage2: dict[str, int] = Field(
        default_factory=dict,
        description="kept, flipped, discarded, quarantined, discarded:<reason>, llm_checked.",
    )
    audit: list[dict[str, Any]] = Field(
        default_factory=list, description="Noise-audit rows (measure, share, lo, hi, blind, n)."
    )
    evaluation: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Final RM on the bundled benchmarks: benchmark, accuracy, length_baseline, "
        "pairs.",
    )
    comparison: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Curated vs uncurated RMs on held-out human pairs: model, train_pairs, "
        "accuracy, lo, hi, pairs.",
    )
    steps: list[StepTime] = Field(default_factory=list, description="Wall time per step.")
    mlflow_run_id: str | None = None


def write_json(model: BaseModel, path: str | Path) -> Path:
    """Write atomically (a half-written record never becomes a resume point)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(model.model_dump_json(indent=2))
    tmp.replace(path)
    return path


def load_summary(path: str | Path) -> Stage1Summary | DemoSummary:
    """A ``stage1.json`` or ``demo.json`` (or a directory holding one, demo first)."""
    path = Path(path)
    if path.is_dir():
        for name in ("demo.json", "stage1.json"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path}: neither demo.json nor stage1.json is there")
    record = json.loads(path.read_text())
    return (
        DemoSummary.model_validate(record)
        if "stage1" in record
        else Stage1Summary.model_validate(record)
    )
