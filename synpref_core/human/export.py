"""Verified items to gold shards: a pair stage (``data/part-00000.parquet`` + ``manifest.json``)
that later rounds read like any other, and an MLflow record of it.

    manifest = export_gold(engine, GoldExportConfig(out=".synpref/human-gold"))

Each decided item becomes one row (DESIGN §2 step 4): humans preferred the stored chosen → status
``gold``; the stored rejected → ``gold`` with the sides swapped (a new content id, ``parent_id``
naming the original); undecidable → ``discarded`` with the reason. ``decided_by`` is ``human``
whatever an LLM said before (a human verdict overrides an LLM one), ``evidence.human_votes`` holds
the votes in the row's order (1 chosen better, 0 rejected better, -1 undecidable) and judge
evidence is kept. Attributes edited by annotators carry ``source: human``. Items still pending or
in disagreement are not written; the counts reconcile: ``items = gold + discarded + pending +
disagreement`` and ``rows = gold + discarded``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pyarrow as pa
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.engine import Engine, make_url

from synpref_core import schema
from synpref_core.config import DEFAULT_HOME, ExecutorConfig, StrictModel, TrackingConfig
from synpref_core.human import store
from synpref_core.human.verdicts import Outcome, decide
from synpref_core.io import fs as fsio
from synpref_core.stages import ShardResult, Stage, part_name

VOTE_CODE = {"chosen": 1, "rejected": 0, "undecidable": -1}
COUNT_KEYS = ("items", "gold", "swapped", "discarded", "pending", "disagreement")


class GoldExportConfig(StrictModel):
    """Which batches to export, and where."""

    out: str = Field(str(DEFAULT_HOME / "human-gold"), description="Output stage directory.")
    batches: list[str] | None = Field(None, description="Batch names; None: every batch.")


def item_outcomes(engine: Engine, batches: list[str] | None) -> list[tuple[store.Item, Outcome]]:
    """Every item of the batches with its outcome, in (batch, position) order."""
    with store.reading(engine) as session:
        query = select(store.Item, store.Batch).join(store.Batch)
        if batches is not None:
            query = query.where(store.Batch.name.in_(batches))
        rows = session.execute(query.order_by(store.Batch.id, store.Item.position)).all()
        votes: dict[int, list[str]] = {}
        for item_id, preferred in session.execute(
            select(store.Verdict.item_id, store.Verdict.preferred).order_by(store.Verdict.user_id)
        ):
            votes.setdefault(item_id, []).append(preferred)
        adjudicated = dict(
            session.execute(select(store.Adjudication.item_id, store.Adjudication.preferred))
            .tuples()
            .all()
        )
    return [
        (item, decide(votes.get(item.id, []), batch.overlap, adjudicated.get(item.id)))
        for item, batch in rows
    ]


def _attributes(item: store.Item) -> dict[str, Any]:
    out = {}
    for name in schema.ATTRIBUTE_NAMES:
        stored = item.pair.get(name)
        value = item.attributes.get(name)
        unchanged = value == (stored or {}).get("value")
        out[name] = stored if unchanged else {"value": value, "source": "human"}
    return out


def gold_row(item: store.Item, outcome: Outcome, run_id: str) -> dict[str, Any]:
    """The pair row a decided item becomes (pure)."""
    pair = {**item.pair, **_attributes(item), "decided_by": "human", "run_id": run_id}
    votes = [VOTE_CODE[v] for v in outcome.votes]
    evidence = {**(pair.get("evidence") or {}), "human_votes": votes, "note": None}
    how = "adjudicated" if outcome.state == "adjudicated" else "majority"
    if outcome.preferred == "undecidable":
        evidence["note"] = f"undecidable ({how} of {len(votes)} human votes): discarded"
        return {**pair, "status": "discarded", "evidence": evidence}
    if outcome.preferred == "rejected":
        chosen, rejected = pair["rejected"], pair["chosen"]
        evidence["human_votes"] = [1 - v if v >= 0 else v for v in votes]
        evidence["note"] = f"sides swapped: humans preferred the stored rejected ({how})"
        new_id = schema.pair_id(pair["conversation"], chosen, rejected)
        pair |= {
            "pair_id": new_id,
            "chosen": chosen,
            "rejected": rejected,
            "parent_id": item.pair_id,
        }
    else:
        evidence["note"] = f"human verified ({how})"
    return {**pair, "status": "gold", "evidence": evidence}


class GoldExportStage(Stage):
    """One shard: the decided items' rows, computed up front so the identity names them."""

    name = "human_gold"

    def __init__(self, engine: Engine, config: GoldExportConfig):
        self.outcomes = item_outcomes(engine, config.batches)
        # Every vote and edit so far: new verdicts, a new identity (and a fresh shard).
        state = [(i.id, o.state, o.preferred, o.votes, i.attributes) for i, o in self.outcomes]
        digest = hashlib.sha256(orjson.dumps([config.batches, state])).hexdigest()[:16]
        db = make_url(engine.url).render_as_string(hide_password=True)
        record = {**config.model_dump(mode="json"), "db": db}
        super().__init__(config.out, record, digest, [])

    def schemas(self) -> dict[str, str]:
        return {"data": schema.fingerprint(schema.PAIR_SCHEMA)}

    def plan(self) -> list[dict[str, Any]]:
        return [{"items": len(self.outcomes)}]

    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        counts = dict.fromkeys(COUNT_KEYS, 0)
        rows = []
        for item, outcome in self.outcomes:
            counts["items"] += 1
            if outcome.preferred is None:
                counts[outcome.state] += 1
                continue
            row = gold_row(item, outcome, self.run_id)
            rows.append(row)
            counts["gold" if row["status"] == "gold" else "discarded"] += 1
            counts["swapped"] += row["parent_id"] == item.pair_id
        fs, root = fsio.resolve(self.out)
        rel = f"data/{part_name(index)}.parquet"
        with fsio.AtomicParquetWriter(fs, fsio.join(root, rel), schema.PAIR_SCHEMA) as out:
            out.write(pa.Table.from_pylist(rows, schema=schema.PAIR_SCHEMA))
        entry = {"path": rel, "kind": "data", "rows": out.rows, "bytes": out.size()}
        return {"shard": index, "files": [entry], "counts": {"rows": len(rows), **counts}}


def export_gold(engine: Engine, config: GoldExportConfig) -> str:
    """Write the decided items of ``config.batches`` as a gold pair stage; its manifest URI."""
    from synpref_core.executors import run

    return run(GoldExportStage(engine, config), ExecutorConfig(kind="local"), progress=False)


def record_export(manifest_uri: str, tracking: TrackingConfig, run_name: str = "human-gold") -> str:
    """An MLflow run holding the export's counts and manifest; returns the run id."""
    from synpref_core import tracking as mlflow_tracking
    from synpref_core.stages import load_manifest

    manifest = load_manifest(manifest_uri)
    tags = {"stage": manifest.stage, "labels": "human"}
    with mlflow_tracking.start_run(tracking, run_name, tags) as run:
        mlflow_tracking.log_counts(manifest.counts)
        mlflow_tracking.log_manifest(manifest.uri)
        return run.info.run_id
