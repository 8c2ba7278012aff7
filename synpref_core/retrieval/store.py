"""The vector store: LanceDB tables ``pool`` (D_un and everything not gold) and ``gold`` (D_gold).

Layout: a LanceDB database at ``StoreConfig.uri``, a local directory or an object-store URI
(``s3://...`` with ``storage_options``). Both tables hold one row per pair: ``pair_id``,
``vector`` (unit float32), ``status``, ``round``, ``source``, the attribute values
``task_category`` / ``objectivity`` / ``controversiality`` as plain strings, ``model`` and
``model_version``. ``gold`` also keeps what a few-shot example shows: ``conversation``,
``chosen``, ``rejected``, ``desired_attributes``, ``annotation_guideline``, ``decided_by``.

**One writer.** Concurrent LanceDB writers to one table collide at commit (lancedb #725, #1597)
and concurrent ``merge_insert`` of the same new key can even commit duplicates (lance #4585). So
every write of a :class:`VectorStore` (upserts, status updates, index builds, compaction) is a
job on one queue drained by one writer thread; consecutive upserts of a table are coalesced into
one ``merge_insert`` of up to ``write_batch_rows`` rows (one commit, one version). Any number of
threads may call :meth:`VectorStore.upsert`; across processes, give the store to one owner (the
flow, or a Ray actor holding it) and send rows there. An open store holds the output lock of its
directory (:mod:`synpref_core.io.lock`), so a second process opening it fails at once, naming
the holder.

**One vector space per table.** Rows carry ``model_version`` (the encoder's fingerprint); rows of
another fingerprint than the table's raise :class:`StoreError`, or, with
``on_model_change="recreate"``, drop the table and start it again from the new rows (everything
else must then be re-embedded and added again).

**Search.** Cosine distance (1 − cos). Exact below ``ann.min_rows`` rows, from an in-memory copy
of the table's ids and vectors, read again after each write (:mod:`synpref_core.retrieval.flat`;
6× LanceDB's flat scan at 10k rows, 11× at 100k); above, an ANN
index (IVF_PQ by default, or IVF_HNSW_SQ) built by :meth:`VectorStore.optimize` or
:meth:`VectorStore.ensure_index` and searched with ``nprobes`` / ``refine_factor`` / ``ef``.
Queries go to LanceDB ``query_batch`` vectors at a time (one scan for a flat batch).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from synpref_core.config import DEFAULT_HOME, StrictModel
from synpref_core.io import fs as fsio
from synpref_core.io.lock import output_lock
from synpref_core.retrieval.flat import FlatTable
from synpref_core.retrieval.tables import (
    FILTER_COLUMNS,
    GOLD_TEXT,
    id_filter,
    last_per_id,
    store_rows,
    table_schema,
)
from synpref_core.schema import conform
from synpref_core.stages import load_manifest

log = logging.getLogger(__name__)

TableName = Literal["pool", "gold"]
KEEP_ROUND_STAMP = "target.`round` IS NULL OR source.`round` IS NOT NULL"


class StoreError(RuntimeError):
    """The store cannot do what was asked; the message names the table and the reason."""


class AnnConfig(StrictModel):
    """The ANN index and how it is searched (ours: the paper names no metric or index)."""

    kind: Literal["IVF_PQ", "IVF_HNSW_SQ"] = Field("IVF_PQ", description="Index type.")
    min_rows: int = Field(
        100_000, ge=256, description="Build an index from this many rows; exact search below."
    )
    num_partitions: int | None = Field(None, ge=1, description="IVF partitions; None: LanceDB's.")
    num_sub_vectors: int | None = Field(None, ge=1, description="IVF_PQ; None: dim / 16.")
    m: int = Field(20, ge=4, description="IVF_HNSW_SQ: graph degree.")
    ef_construction: int = Field(300, ge=16, description="IVF_HNSW_SQ: build beam width.")
    # nprobes 20 / refine_factor 20: recall@8 0.98 at 1M synthetic 384-d vectors with the
    # default IVF_PQ (dim / 16 sub-vectors); refine 10 gave 0.90 (benchmarks/bench_retrieval.py).
    nprobes: int = Field(20, ge=1, description="IVF partitions searched per query.")
    refine_factor: int | None = Field(
        20, ge=1, description="Re-rank refine_factor × k candidates with exact vectors."
    )
    ef: int | None = Field(None, ge=1, description="IVF_HNSW_SQ search beam; None: 1.5 × k.")


class StoreConfig(StrictModel):
    """The LanceDB vector store: where it lives, how it writes and how it is indexed."""

    uri: str = Field(str(DEFAULT_HOME / "vectors"), description="LanceDB directory or URI.")
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="Object-store options passed to LanceDB."
    )
    on_model_change: Literal["error", "recreate"] = Field(
        "error", description="Rows of another model_version: refuse, or drop and recreate."
    )
    write_batch_rows: int = Field(50_000, ge=1, description="Most rows per merge_insert commit.")
    query_batch: int = Field(256, ge=1, description="Query vectors per LanceDB search call.")
    prune_older_than_s: int = Field(
        3600, ge=0, description="optimize() deletes table versions older than this."
    )
    ann: AnnConfig = Field(default_factory=AnnConfig)


# -- the store -------------------------------------------------------------------------------


@dataclass
class _Job:
    table: str
    kind: Literal["upsert", "update", "call"]
    rows: pa.Table | None = None
    fn: Callable[[], Any] | None = None
    future: Future = field(default_factory=Future)


_STOP = _Job(table="", kind="call")


class VectorStore:
    """The ``pool`` and ``gold`` tables of one LanceDB database, written by one thread.

    Use as a context manager, or call :meth:`close`: it waits for queued writes.
    """

    def __init__(self, config: StoreConfig | None = None, read_only: bool = False):
        import lancedb

        self.config = config or StoreConfig()
        self.read_only = read_only
        # One writing process per store (synpref_core.io.lock): a second fails at once. Readers
        # (few-shot lookups on many actors at once) take no lock and may not write.
        self._owner = contextlib.ExitStack()
        if not read_only:
            self._owner.enter_context(output_lock(self.config.uri))
        self._db = lancedb.connect(self.config.uri, storage_options=self.config.storage_options)
        self._tables: dict[str, Any] = {}
        self._models: dict[str, tuple[str, str]] = {}
        self._flat: dict[str, tuple[Any, FlatTable]] = {}  # table -> (live handle, its copy)
        self._lock = threading.Lock()
        self._failed: list[BaseException] = []  # write errors since the last flush
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="vector-store-writer")
        self._writer.daemon = True  # a crashed caller must not hang the interpreter at exit
        self._writer.start()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish every queued write, then stop the writer."""
        if self._writer.is_alive():
            self._queue.put(_STOP)
            self._writer.join()
        self._owner.close()

    # -- writing (every write is a job for the one writer thread) ---------------------------

    def upsert(self, table: TableName, rows: pa.Table) -> Future:
        """Queue an insert-or-update by ``pair_id`` of rows in ``table_schema(table, dim)``.

        Checked here, in the caller's thread, so a bad batch fails its own caller; the returned
        future completes when the rows are committed (and raises what the commit raised).
        """
        if "vector" not in rows.schema.names:
            raise StoreError(f"{table}: rows without a vector column")
        rows = conform(rows, table_schema(table, rows.schema.field("vector").type.list_size))
        model_of_rows(rows, table)
        return self._submit(_Job(table, "upsert", rows=rows))

    def update_status(
        self, table: TableName, pair_ids: Sequence[str], status: str, round: int | None
    ) -> Future:
        """Queue setting ``status`` and ``round`` of existing rows (absent ids are ignored)."""
        rows = pa.table(
            {
                "pair_id": pa.array(pair_ids, pa.string()),
                "status": pa.array([status] * len(pair_ids), pa.string()),
                "round": pa.array([round] * len(pair_ids), pa.int32()),
            }
        )
        return self._submit(_Job(table, "update", rows=rows))

    def add_embeddings(self, embeddings: str) -> dict[str, int]:
        """Upsert every pair of a finished embedding stage (its manifest URI): gold pairs into
        ``gold``, the rest into ``pool``. Returns the rows sent to each table.

        Streams the stage's shards beside the pair shards they came from (the same shard order,
        the same rows), one shard in memory at a time; waits for the commits."""
        manifest = load_manifest(embeddings)
        pairs_dir = load_manifest(manifest.parents[0]).dir
        pair_columns = ["pair_id", "status", "round", "source", *FILTER_COLUMNS[:3], *GOLD_TEXT]
        counts = {"pool": 0, "gold": 0}
        writes = []
        for shard in manifest.shards:
            vectors = _read(fsio.join(manifest.dir, shard["files"][0]["path"]), None)
            pairs = _read(fsio.join(pairs_dir, shard["spec"]["input"]), pair_columns)
            gold = pc.equal(pairs["status"], "gold")
            for table, part in (
                ("gold", pairs.filter(gold)),
                ("pool", pairs.filter(pc.invert(gold))),
            ):
                if not part.num_rows:
                    continue
                try:
                    rows = store_rows(part, vectors, table)
                except ValueError as exc:  # a pair shard and its embedding shard disagree
                    raise StoreError(
                        f"{embeddings}, shard {shard['spec']['input']}: {exc}"
                    ) from exc
                writes.append(self.upsert(table, rows))
                counts[table] += part.num_rows
        for write in writes:
            write.result()  # raises what the commit raised, e.g. a model change
        return counts

    def flush(self) -> None:
        """Wait until everything queued so far is committed; raise if a write since the last
        flush failed (so an error is not lost when nobody looked at its future)."""
        self._submit(_Job("", "call", fn=lambda: None)).result()
        failed, self._failed = self._failed, []
        if failed:
            raise StoreError(f"{len(failed)} queued writes failed; the first: {failed[0]}") from (
                failed[0]
            )

    def optimize(self, table: TableName) -> dict[str, int]:
        """Compact small files, drop versions older than ``prune_older_than_s``, add new rows to
        the index, and build the index if the table has reached ``ann.min_rows``."""

        def run() -> dict[str, int]:
            handle = self._require(table)
            handle.optimize(cleanup_older_than=timedelta(seconds=self.config.prune_older_than_s))
            return {"rows": handle.count_rows(), "index_built": int(self._build_index(table))}

        return self._submit(_Job(table, "call", fn=run)).result()

    def ensure_index(self, table: TableName, force: bool = False) -> bool:
        """Build the ANN index if there is none and the table has ``ann.min_rows`` rows (or
        ``force``). True when one was built."""
        return self._submit(
            _Job(table, "call", fn=lambda: self._build_index(table, force))
        ).result()

    def _submit(self, job: _Job) -> Future:
        if self.read_only:
            raise StoreError(f"{self.config.uri}: opened read-only, cannot {job.kind}")
        if not self._writer.is_alive():
            raise StoreError("the store is closed")
        self._queue.put(job)
        return job.future

    def _write_loop(self) -> None:
        held: _Job | None = None
        while True:
            job = held or self._queue.get()
            held = None
            if job is _STOP:
                return
            jobs = [job]
            rows = job.rows.num_rows if job.rows is not None else 0
            while job.kind != "call" and rows < self.config.write_batch_rows:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt.kind != job.kind or nxt.table != job.table:
                    held = nxt
                    break
                jobs.append(nxt)
                rows += nxt.rows.num_rows
            self._run_jobs(jobs)

    def _run_jobs(self, jobs: list[_Job]) -> None:
        try:
            result = jobs[0].fn() if jobs[0].kind == "call" else self._write(jobs)
        except Exception as exc:  # the writer thread hands every error to the callers it failed
            if jobs[0].kind != "call":  # queued writes whose future may go unread: flush() tells
                self._failed.append(exc)
            for job in jobs:
                job.future.set_exception(exc)
            return
        for job in jobs:
            job.future.set_result(result)

    def _write(self, jobs: list[_Job]) -> int:
        table = jobs[0].table
        rows = last_per_id(pa.concat_tables([j.rows for j in jobs]))
        handle = self._open(table)
        if jobs[0].kind == "update":
            if handle is not None:
                handle.merge_insert("pair_id").when_matched_update_all().execute(rows)
            return rows.num_rows
        model = model_of_rows(rows, table)
        stored = self.model_of(table)
        if handle is not None and stored not in (None, model):
            if self.config.on_model_change == "error":
                raise StoreError(
                    f"{table}: holds vectors of {stored}, got {model}; re-embed everything with "
                    "one model, or set on_model_change='recreate'"
                )
            log.warning("%s: model changed %s -> %s: table recreated", table, stored, model)
            self._db.drop_table(table)
            handle = None
        if handle is None:
            handle = self._db.create_table(table, data=rows, schema=rows.schema)
            with self._lock:
                self._tables[table] = handle
        else:
            # A row a round has used keeps its stamp: re-adding the same pairs (round unset, as
            # the pair shards have it) must not make them eligible again.
            merge = handle.merge_insert("pair_id").when_matched_update_all(where=KEEP_ROUND_STAMP)
            merge.when_not_matched_insert_all().execute(rows)
        self._models[table] = model
        return rows.num_rows

    def _build_index(self, table: str, force: bool = False) -> bool:
        from lancedb.index import HnswSq, IvfPq

        handle = self._require(table)
        if self.has_index(table) or (not force and handle.count_rows() < self.config.ann.min_rows):
            return False
        ann = self.config.ann
        if ann.kind == "IVF_PQ":
            index = IvfPq(
                distance_type="cosine",
                num_partitions=ann.num_partitions,
                num_sub_vectors=ann.num_sub_vectors,
            )
        else:
            index = HnswSq(
                distance_type="cosine",
                num_partitions=ann.num_partitions,
                m=ann.m,
                ef_construction=ann.ef_construction,
            )
        handle.create_index("vector", config=index, replace=True)
        return True

    # -- reading ------------------------------------------------------------------------------

    def _open(self, table: str) -> Any | None:
        with self._lock:
            if table not in self._tables and table in self._db.list_tables().tables:
                self._tables[table] = self._db.open_table(table)
            return self._tables.get(table)

    def _require(self, table: str) -> Any:
        handle = self._open(table)
        if handle is None:
            raise StoreError(f"no table {table!r} in {self.config.uri}: nothing was added to it")
        return handle

    def exists(self, table: TableName) -> bool:
        return self._open(table) is not None

    def count(self, table: TableName, where: str | None = None) -> int:
        handle = self._open(table)
        return 0 if handle is None else handle.count_rows(where)

    def version(self, table: TableName) -> int | None:
        """The table's LanceDB version (it grows with every write); None for a missing table."""
        handle = self._open(table)
        return None if handle is None else int(handle.version)

    def has_index(self, table: TableName) -> bool:
        handle = self._open(table)
        return handle is not None and any("vector" in i.columns for i in handle.list_indices())

    def model_of(self, table: TableName) -> tuple[str, str] | None:
        """(model, model_version) of the table's vectors; None for a missing or empty table."""
        if table not in self._models:
            handle = self._open(table)
            if handle is None:
                return None
            first = handle.search().select(["model", "model_version"]).limit(1).to_arrow()
            if not first.num_rows:
                return None
            self._models[table] = (first["model"][0].as_py(), first["model_version"][0].as_py())
        return self._models[table]

    def fetch(
        self, table: TableName, pair_ids: Sequence[str], columns: Sequence[str] | None = None
    ) -> pa.Table:
        """The rows of these pair ids (in no particular order; absent ids are skipped)."""
        handle = self._require(table)
        parts = []
        for start in range(0, len(pair_ids), 1000):  # bounded SQL IN lists
            chunk = pair_ids[start : start + 1000]
            query = handle.search().where(id_filter(chunk)).limit(len(chunk))
            parts.append((query.select(list(columns)) if columns else query).to_arrow())
        if parts:
            return pa.concat_tables(parts)
        empty = handle.schema.empty_table()
        return empty.select(list(columns)) if columns else empty

    def search(
        self,
        table: TableName,
        vectors: np.ndarray,
        k: int,
        where: str | None = None,
        columns: Sequence[str] = ("pair_id",),
        exact: bool = False,
    ) -> pa.Table:
        """The ``k`` nearest rows of each query vector that pass ``where`` (a prefilter).

        Columns ``query_index`` (position in ``vectors``), ``columns`` and ``_distance``
        (cosine), sorted by query, then distance. ``exact`` bypasses the ANN index. Exact
        searches of a table below ``ann.min_rows`` run in memory (:mod:`.flat`).
        """
        handle = self._require(table)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        indexed = not exact and self.has_index(table)
        if not indexed and tuple(columns) == ("pair_id",):
            flat = self._flat_table(table, handle)
            if flat is not None:
                return flat.search(vectors, k, where, self.config.query_batch)
        parts = []
        for start in range(0, len(vectors), self.config.query_batch):
            chunk = vectors[start : start + self.config.query_batch]
            query = handle.search(chunk, vector_column_name="vector").distance_type("cosine")
            query = query.limit(k).select([*columns, "_distance"])
            if where:
                query = query.where(where, prefilter=True)
            if exact:
                query = query.bypass_vector_index()
            elif indexed:
                query = self._tune(query)
            part = query.to_arrow()
            if "query_index" not in part.column_names:  # LanceDB adds it only for 2+ queries
                part = part.add_column(0, "query_index", pa.array([0] * part.num_rows, pa.int32()))
            index = pc.add(part["query_index"].cast(pa.int64()), start)
            parts.append(part.set_column(0, "query_index", index))
        result = pa.concat_tables(parts).select(["query_index", *columns, "_distance"])
        return result.sort_by([("query_index", "ascending"), ("_distance", "ascending")])

    def _flat_table(self, table: str, handle: Any) -> FlatTable | None:
        """The in-memory copy of a table below ``ann.min_rows``, read again after any write
        (a new version) or a recreation (a new handle); None for a larger table."""
        version = handle.version
        with self._lock:
            live, flat = self._flat.get(table, (None, None))
        if live is handle and flat.version == version:
            return flat
        if handle.count_rows() >= self.config.ann.min_rows:
            with self._lock:
                self._flat.pop(table, None)
            return None
        flat = FlatTable.load(self._db, table, version)
        with self._lock:
            self._flat[table] = (handle, flat)
        return flat

    def _tune(self, query: Any) -> Any:
        ann = self.config.ann
        query = query.nprobes(ann.nprobes)
        if ann.refine_factor:
            query = query.refine_factor(ann.refine_factor)
        if ann.ef:
            query = query.ef(ann.ef)
        return query


def model_of_rows(rows: pa.Table, table: str) -> tuple[str, str]:
    """The one (model, model_version) of a batch of rows; a batch mixing models is refused."""
    models = set(zip(rows["model"].to_pylist(), rows["model_version"].to_pylist(), strict=True))
    if len(models) != 1:
        raise StoreError(f"{table}: one write mixes vectors of {len(models)} models: {models}")
    return models.pop()


def _read(uri: str, columns: list[str] | None) -> pa.Table:
    fs, path = fsio.resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.read_table(f, columns=columns)
