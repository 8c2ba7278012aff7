"""Stage 1's bookkeeping, pure: gold accuracy per category, the round records a re-run resumes
from, and the identity that says whether a record still belongs to the config.

A round's record (:class:`~synpref_core.run_summary.RoundRecord`, ``rounds/round-NNN.json``) is
written after everything the round makes has a manifest; it carries the hash of the config that
made it (:func:`rounds_identity`: the config less ``rounds`` and the runtime) and of the
record before it. A re-run resumes after the last record whose chain of hashes still matches and
whose manifests still exist; a changed config or a lost manifest starts again from there, and
every stage below re-runs only the shards whose inputs changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel

from synpref_core.config import config_hash
from synpref_core.run_summary import RoundRecord, write_json
from synpref_core.stages import StageError, load_manifest, read_stage

UNKNOWN = "(no category)"


def gold_accuracy(scores: str, gold: str) -> tuple[float | None, dict[str, float], int]:
    """(share of gold pairs with p > 0.5, the same per task category, pairs scored)."""
    p = pl.from_arrow(read_stage(scores, ["pair_id", "p"]))
    categories = read_stage(gold, ["pair_id", "task_category"]).to_pylist()
    cat = pl.DataFrame(
        {
            "pair_id": [row["pair_id"] for row in categories],
            "category": [
                (row["task_category"] or {}).get("value") or UNKNOWN for row in categories
            ],
        },
        schema={"pair_id": pl.String, "category": pl.String},
    )
    table = p.join(cat, on="pair_id", how="left").with_columns(
        right=pl.col("p") > 0.5, category=pl.col("category").fill_null(UNKNOWN)
    )
    if table.height == 0:
        return None, {}, 0
    by = table.group_by("category").agg(pl.col("right").mean()).sort("category")
    return (
        float(table["right"].mean()),
        dict(zip(by["category"].to_list(), by["right"].to_list(), strict=True)),
        table.height,
    )


def rounds_identity(config: BaseModel, exclude: set[str]) -> str:
    """What every round's output depends on: the config less ``exclude`` (rounds, runtime)."""
    return config_hash(config.model_dump(mode="json", exclude=exclude))


def record_path(out: str | Path, round_: int) -> Path:
    return Path(out) / "rounds" / f"round-{round_:03d}.json"


def chain_hash(identity: str, previous: RoundRecord | None) -> str:
    """A round's place in its run: the config identity and the record before it."""
    before = "" if previous is None else previous.model_dump_json(exclude={"seconds", "timings"})
    return config_hash({"identity": identity, "previous": before})


def completed_rounds(out: str | Path, identity: str) -> list[RoundRecord]:
    """The records a re-run may keep: from round 1, while each belongs to this config and to the
    record before it and names manifests that still exist."""
    kept: list[RoundRecord] = []
    round_ = 1
    while (path := record_path(out, round_)).exists():
        try:
            record = RoundRecord.model_validate(json.loads(path.read_text()))
        except ValueError:
            break  # a torn or foreign record: this round runs again
        previous = kept[-1] if kept else None
        if record.chain != chain_hash(identity, previous) or not _manifests_exist(record):
            break
        kept.append(record)
        round_ += 1
    return kept


def _manifests_exist(record: RoundRecord) -> bool:
    try:
        for uri in record.manifests.values():
            load_manifest(uri)
    except (OSError, ValueError, StageError):  # unreadable: the round runs again
        return False
    return True


def save_round(out: str | Path, record: RoundRecord) -> Path:
    return write_json(record, record_path(out, record.round))


def heldout_accuracy(scores: str, seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    """Share of pairs an RM ranks right (p > 0.5) with a 95% bootstrap interval: ``accuracy``,
    ``lo``, ``hi``, ``pairs``."""
    import numpy as np

    right = np.asarray(read_stage(scores, ["p"])["p"].to_numpy(zero_copy_only=False) > 0.5)
    if right.size == 0:
        return {"accuracy": None, "lo": None, "hi": None, "pairs": 0}
    draws = np.random.default_rng(seed).choice(right, size=(resamples, right.size)).mean(axis=1)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {
        "accuracy": float(right.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "pairs": int(right.size),
    }


def length_baseline(pairs: str) -> float | None:
    """Share of pairs whose chosen response is the longer one (the length baseline)."""
    table = read_stage(pairs, ["chosen", "rejected"])
    if table.num_rows == 0:
        return None
    longer = [
        len(c) > len(r)
        for c, r in zip(table["chosen"].to_pylist(), table["rejected"].to_pylist(), strict=True)
    ]
    return sum(longer) / len(longer)
