"""Rows of the vector store's tables, and loading a finished embedding stage into the store.

``pool`` holds every pair that is not gold (D_un, and the silver / discarded ones with their
status, so retrieval can skip them); ``gold`` holds D_gold with the text a few-shot example
shows. :func:`add_embeddings` streams an embedding stage's shards beside the pair shards they
came from (the same shard order, the same rows) and sends each pair to its table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synpref_core.io import fs as fsio
from synpref_core.schema import MESSAGE
from synpref_core.stages import load_manifest

if TYPE_CHECKING:
    from synpref_core.retrieval.store import VectorStore

FILTER_COLUMNS: tuple[str, ...] = ("task_category", "objectivity", "controversiality", "source")
GOLD_ATTRIBUTES: tuple[str, ...] = ("desired_attributes", "annotation_guideline")
GOLD_TEXT: tuple[str, ...] = ("conversation", "chosen", "rejected", *GOLD_ATTRIBUTES, "decided_by")


class StoreError(RuntimeError):
    """The store cannot do what was asked; the message names the table and the reason."""


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
    stage's), matched by ``pair_id``. Every pair must have a vector."""
    position = {pid: i for i, pid in enumerate(embeddings.column("pair_id").to_pylist())}
    try:
        take = [position[pid] for pid in pairs.column("pair_id").to_pylist()]
    except KeyError as exc:
        raise StoreError(f"pair {exc.args[0]} has no embedding") from exc
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


def add_embeddings(store: VectorStore, embeddings: str) -> dict[str, int]:
    """Upsert every pair of a finished embedding stage: gold pairs into ``gold``, the rest into
    ``pool``. Returns the rows sent to each table. One shard in memory at a time."""
    manifest = load_manifest(embeddings)
    pairs_dir = load_manifest(manifest.parents[0]).dir
    pair_columns = ["pair_id", "status", "round", "source", *FILTER_COLUMNS[:3], *GOLD_TEXT]
    counts = {"pool": 0, "gold": 0}
    writes = []
    for shard in manifest.shards:
        vectors = _read(fsio.join(manifest.dir, shard["files"][0]["path"]), None)
        pairs = _read(fsio.join(pairs_dir, shard["spec"]["input"]), pair_columns)
        gold = pc.equal(pairs["status"], "gold")
        for table, rows in (("gold", pairs.filter(gold)), ("pool", pairs.filter(pc.invert(gold)))):
            if rows.num_rows:
                writes.append(store.upsert(table, store_rows(rows, vectors, table)))
                counts[table] += rows.num_rows
    for write in writes:
        write.result()  # raises what the commit raised, e.g. a model change
    return counts


def _read(uri: str, columns: list[str] | None) -> pa.Table:
    fs, path = fsio.resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.read_table(f, columns=columns)


def last_per_id(rows: pa.Table) -> pa.Table:
    """One row per pair_id, the last one given (merge_insert refuses ambiguous sources)."""
    last = {pid: i for i, pid in enumerate(rows.column("pair_id").to_pylist())}
    if len(last) == rows.num_rows:
        return rows
    return rows.take(pa.array(sorted(last.values()), pa.int64()))


def model_of_rows(rows: pa.Table, table: str) -> tuple[str, str]:
    """The one (model, model_version) of a batch of rows; a batch mixing models is refused."""
    models = set(zip(rows["model"].to_pylist(), rows["model_version"].to_pylist(), strict=True))
    if len(models) != 1:
        raise StoreError(f"{table}: one write mixes vectors of {len(models)} models: {models}")
    return models.pop()


def sql_string(value: str) -> str:
    """A SQL string literal (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def id_filter(pair_ids: Iterable[str]) -> str:
    return "pair_id IN (" + ", ".join(sql_string(p) for p in pair_ids) + ")"
