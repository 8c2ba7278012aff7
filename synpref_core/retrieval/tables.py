"""Rows of the vector store's tables: their schema, shaping pairs and vectors into them, and
the SQL literals that select them.

``pool`` holds every pair that is not gold (D_un, and the silver / discarded ones with their
status, so retrieval can skip them); ``gold`` holds D_gold with the text a few-shot example
shows. Plain functions over Arrow tables: the store (``store.py``) imports them, never the other
way round.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from synpref_core.schema import MESSAGE

FILTER_COLUMNS: tuple[str, ...] = ("task_category", "objectivity", "controversiality", "source")
GOLD_ATTRIBUTES: tuple[str, ...] = ("desired_attributes", "annotation_guideline")
GOLD_TEXT: tuple[str, ...] = ("conversation", "chosen", "rejected", *GOLD_ATTRIBUTES, "decided_by")


def table_schema(table: str, dim: int) -> pa.Schema:
    """The columns of ``pool`` or ``gold`` for vectors of width ``dim``."""
    fields = [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("round", pa.int32()),
        pa.field("source", pa.string()),
        *(pa.field(name, pa.string()) for name in FILTER_COLUMNS[:3]),
        pa.field("model", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
    ]
    if table == "gold":
        fields += [
            pa.field("conversation", pa.list_(MESSAGE)),
            pa.field("chosen", pa.string()),
            pa.field("rejected", pa.string()),
            *(pa.field(name, pa.string()) for name in GOLD_ATTRIBUTES),
            pa.field("decided_by", pa.string()),
        ]
    return pa.schema(fields)


def store_rows(pairs: pa.Table, embeddings: pa.Table, table: str) -> pa.Table:
    """Rows for ``table`` from pairs (``PAIR_SCHEMA`` columns) and their embeddings (the embed
    stage's), matched by ``pair_id``. Every pair must have a vector (else ``ValueError``)."""
    position = {pid: i for i, pid in enumerate(embeddings.column("pair_id").to_pylist())}
    try:
        take = [position[pid] for pid in pairs.column("pair_id").to_pylist()]
    except KeyError as exc:
        raise ValueError(f"pair {exc.args[0]} has no embedding") from exc
    vectors = embeddings.take(pa.array(take, pa.int64()))
    schema = table_schema(table, vectors.schema.field("vector").type.list_size)
    columns: dict[str, Any] = {}
    for name in schema.names:
        if name in ("vector", "model", "model_version"):
            columns[name] = vectors.column(name)
        elif pa.types.is_struct(pairs.schema.field(name).type):  # an attribute {value, source}
            columns[name] = pc.struct_field(pairs.column(name), "value")
        else:
            columns[name] = pairs.column(name)
    return pa.table(columns, schema=schema)


def last_per_id(rows: pa.Table) -> pa.Table:
    """One row per pair_id, the last one given (merge_insert refuses ambiguous sources)."""
    last = {pid: i for i, pid in enumerate(rows.column("pair_id").to_pylist())}
    if len(last) == rows.num_rows:
        return rows
    return rows.take(pa.array(sorted(last.values()), pa.int64()))


def sql_string(value: str) -> str:
    """A SQL string literal (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def id_filter(pair_ids: Iterable[str]) -> str:
    return "pair_id IN (" + ", ".join(sql_string(p) for p in pair_ids) + ")"
