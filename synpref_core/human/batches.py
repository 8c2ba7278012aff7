"""Verification batches: which pairs humans verify, in what order, shown how, and by whom.

    config = BatchConfig(pairs=".synpref/annotate", name="round-2", size=200, overlap=2,
                         annotators=["ana", "ben", "cho"], seed=0)
    summary = create_batch(engine, config)

The slice (DESIGN §2 step 4, ours, configurable by ``size``): judge disagreements first (a pair
whose judge votes are not all "chosen is better"), then high-controversiality pairs, then a seeded
random sample of the rest; pairs already in any batch are skipped. Within the batch the protocol
order puts objective, low-controversiality pairs first. Each item shows the two responses in a
seeded random order (position bias), and goes to ``overlap`` annotators in a seeded round robin,
so every annotator gets about ``size * overlap / len(annotators)`` items.

Everything is a function of the pairs' content ids and ``seed``: the same input, the same batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator
from sqlalchemy import select
from sqlalchemy.engine import Engine

from synpref_core.config import StrictModel
from synpref_core.human import store
from synpref_core.schema import ATTRIBUTE_NAMES, Status
from synpref_core.stages import iter_batches, load_manifest

REASONS = ("judge_disagreement", "high_controversiality", "random")
_OBJECTIVITY_RANK = {"objective": 0, "subjective": 1}
_CONTROVERSY_RANK = {"low": 0, "medium": 1, "high": 2}


class BatchConfig(StrictModel):
    """A verification batch drawn from a finished pair stage."""

    pairs: str = Field(description="Pair stage to draw from (its dir or manifest.json).")
    name: str = Field(min_length=1, max_length=128, description="Unique batch name.")
    size: int = Field(100, ge=1, description="Pairs in the batch (fewer if fewer are eligible).")
    overlap: int = Field(2, ge=1, description="Annotators per item (k).")
    annotators: list[str] = Field(min_length=1, description="Accounts the items go to.")
    seed: int = Field(0, ge=0, description="Seeds the sample, the side order, the assignment.")
    round: int | None = Field(None, ge=0, description="The Stage-1 round it belongs to.")
    statuses: list[Status] | None = Field(None, description="Only pairs with these statuses.")

    @model_validator(mode="after")
    def _check_overlap(self) -> BatchConfig:
        if len(set(self.annotators)) != len(self.annotators):
            raise ValueError("annotators must be distinct")
        if self.overlap > len(self.annotators):
            raise ValueError(
                f"overlap {self.overlap} exceeds the {len(self.annotators)} annotators"
            )
        return self


@dataclass(frozen=True)
class PlannedItem:
    pair_id: str
    pair: dict[str, Any]  # the slice columns (SLICE_COLUMNS) the plan was made from
    reason: str
    swapped: bool
    annotators: tuple[str, ...]


def seeded_unit(pair_id: str, seed: int, purpose: str) -> float:
    """A pair's place in [0, 1) for one purpose (sample, side, order): stable everywhere."""
    digest = hashlib.blake2b(f"{purpose}:{seed}:{pair_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64


def _value(pair: dict[str, Any], name: str) -> str | None:
    attribute = pair.get(name)
    return attribute.get("value") if attribute else None


def selection_reason(pair: dict[str, Any]) -> str:
    """Why a pair would be verified: the first of :data:`REASONS` that applies."""
    votes = (pair.get("evidence") or {}).get("judge_votes") or []
    if any(v["vote"] != 1 for v in votes):
        return "judge_disagreement"
    if _value(pair, "controversiality") == "high":
        return "high_controversiality"
    return "random"


def select_slice(pairs: list[dict[str, Any]], size: int, seed: int) -> list[tuple[dict, str]]:
    """The ``size`` pairs to verify, with their reasons: disagreements, high controversy, random."""
    ranked = sorted(
        (
            (
                REASONS.index(r := selection_reason(p)),
                seeded_unit(p["pair_id"], seed, "sample"),
                r,
                p,
            )
            for p in pairs
        ),
        key=lambda t: (t[0], t[1]),
    )
    return [(p, reason) for _, _, reason, p in ranked[:size]]


def protocol_key(pair: dict[str, Any], seed: int) -> tuple[int, int, float]:
    """Objective before subjective, low before high controversiality, then seeded."""
    return (
        _OBJECTIVITY_RANK.get(_value(pair, "objectivity") or "", 2),
        _CONTROVERSY_RANK.get(_value(pair, "controversiality") or "", 3),
        seeded_unit(pair["pair_id"], seed, "order"),
    )


def assign(n_items: int, annotators: list[str], overlap: int, seed: int) -> list[tuple[str, ...]]:
    """Round robin from a seeded start: item i goes to ``overlap`` consecutive annotators."""
    start = int(seeded_unit("assign", seed, "assign") * len(annotators))
    n = len(annotators)
    return [
        tuple(annotators[(start + i * overlap + j) % n] for j in range(overlap))
        for i in range(n_items)
    ]


def plan_batch(pairs: list[dict[str, Any]], config: BatchConfig) -> list[PlannedItem]:
    """The items of a batch in protocol order (pure: no database)."""
    chosen = select_slice(pairs, config.size, config.seed)
    chosen.sort(key=lambda t: protocol_key(t[0], config.seed))
    who = assign(len(chosen), config.annotators, config.overlap, config.seed)
    return [
        PlannedItem(
            pair_id=pair["pair_id"],
            pair=pair,
            reason=reason,
            swapped=seeded_unit(pair["pair_id"], config.seed, "side") < 0.5,
            annotators=names,
        )
        for (pair, reason), names in zip(chosen, who, strict=True)
    ]


# What the slice and the order need of a pair; full rows are read for the chosen ones only.
SLICE_COLUMNS = ["pair_id", "status", "evidence", "objectivity", "controversiality"]


def read_candidates(stage: str, statuses: list[str] | None, skip: set[str]) -> list[dict[str, Any]]:
    """The slice columns of a finished pair stage's rows, less ``skip`` ids, other statuses and
    repeats of an id."""
    rows, seen = [], set(skip)
    for batch in iter_batches(stage, columns=SLICE_COLUMNS):
        for row in batch.to_pylist():
            if row["pair_id"] not in seen and (statuses is None or row["status"] in statuses):
                seen.add(row["pair_id"])
                rows.append(row)
    return rows


def read_rows(stage: str, pair_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The whole rows of the given ids (first occurrence of each)."""
    wanted, rows = pa.array(sorted(pair_ids), pa.string()), {}
    for batch in iter_batches(stage):
        table = pa.Table.from_batches([batch])
        for row in table.filter(pc.is_in(table["pair_id"], wanted)).to_pylist():
            rows.setdefault(row["pair_id"], row)
    return rows


@dataclass(frozen=True)
class BatchSummary:
    batch_id: int
    name: str
    items: int
    assignments: int
    reasons: dict[str, int]


def create_batch(engine: Engine, config: BatchConfig) -> BatchSummary:
    """Draw a batch from ``config.pairs`` and store it with its assignments."""
    manifest = load_manifest(config.pairs)  # fails here, naming the path, if unfinished
    with store.writing(engine) as session:
        if session.scalar(select(store.Batch).where(store.Batch.name == config.name)):
            raise store.StoreError(f"batch {config.name!r} exists; choose another name")
        users = _users_named(session, config.annotators)
        taken = set(session.scalars(select(store.Item.pair_id)))
        planned = plan_batch(read_candidates(config.pairs, config.statuses, taken), config)
        rows = read_rows(config.pairs, {item.pair_id for item in planned})
        batch = store.Batch(
            name=config.name,
            source=manifest.uri,
            seed=config.seed,
            overlap=config.overlap,
            round=config.round,
        )
        session.add(batch)
        session.flush()
        for position, item in enumerate(planned):
            _add_item(session, batch.id, position, item, rows[item.pair_id], users)
        store.audit(
            session,
            None,
            "create_batch",
            f"batch:{config.name}",
            {"items": len(planned), "source": manifest.uri},
        )
        reasons = {r: sum(i.reason == r for i in planned) for r in REASONS}
        return BatchSummary(
            batch.id, config.name, len(planned), len(planned) * config.overlap, reasons
        )


def _users_named(session: Any, names: list[str]) -> dict[str, int]:
    found = dict(
        session.execute(select(store.User.name, store.User.id).where(store.User.name.in_(names)))
        .tuples()
        .all()
    )
    if missing := [n for n in names if n not in found]:
        raise store.StoreError(f"no such annotator account: {', '.join(missing)}")
    return found


def _add_item(
    session: Any,
    batch_id: int,
    position: int,
    item: PlannedItem,
    pair: dict[str, Any],
    users: dict[str, int],
) -> None:
    attributes = {name: _value(pair, name) for name in ATTRIBUTE_NAMES}
    row = store.Item(
        batch_id=batch_id,
        pair_id=item.pair_id,
        position=position,
        swapped=item.swapped,
        reason=item.reason,
        pair=pair,
        attributes=attributes,
    )
    session.add(row)
    session.flush()
    session.add_all(store.Assignment(item_id=row.id, user_id=users[n]) for n in item.annotators)
