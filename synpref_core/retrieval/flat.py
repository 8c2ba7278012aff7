"""Exact cosine search in memory, for store tables below the ANN threshold.

LanceDB's flat scan reads and decodes every vector again for each batch of queries. A
:class:`FlatTable` holds one version of a table's ``pair_id`` and vectors (float32, with their
norms) and answers what LanceDB's exact search answers: the same rows, distances within float32
rounding (9e-7 measured). 256 queries, top 8, 384-d synthetic vectors, 2 shared cores
(``benchmarks/bench_retrieval.py``, 4 runs): at 10k rows 0.02-0.18 s against LanceDB's
0.27-0.37 s (median 5.9×, 1.9-15×), at 100k 0.2-0.7 s against 3.6-4.3 s (median 11×, 5-20×).
Reading the table into memory, once per table version, costs less than one flat scan:
0.14-0.21 s at 10k, 0.9-2.2 s at 100k (150 MB of vectors).

Filters stay LanceDB's: a ``where`` is evaluated by a LanceDB scan of the row ids it selects in
the copy's version (the filter columns only), so any SQL the store accepts works unchanged; the
last filter's rows are kept, as retrieval asks one filter many times.

Ties (equal distances) go to the row stored first (lower ``_rowid``). LanceDB's flat scan gave
the same order in our tests, but it does not promise one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

RESULT_SCHEMA = pa.schema(
    [
        pa.field("query_index", pa.int64()),
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("_distance", pa.float32()),
    ]
)


@dataclass
class FlatTable:
    """One version of a LanceDB table's ``pair_id`` and ``vector``, in row-id order, and the
    rows the last ``where`` selected in that version."""

    handle: Any  # a read-only handle checked out at ``version``
    version: int
    row_ids: np.ndarray  # uint64, ascending
    pair_ids: pa.Array
    vectors: np.ndarray  # float32 (rows, dim)
    norms: np.ndarray  # float32 (rows,)
    _filtered: tuple[str, np.ndarray, np.ndarray, np.ndarray] | None = None

    @classmethod
    def load(cls, db: Any, table: str, version: int) -> FlatTable:
        """Read ``version`` of ``table`` through its own handle, so writes that commit later
        change neither the vectors nor what a filter selects."""
        handle = db.open_table(table)
        handle.checkout(version)
        rows = handle.search().select(["pair_id", "vector"]).with_row_id(True).limit(None)
        rows = rows.to_arrow()
        order = np.argsort(rows["_rowid"].to_numpy(), kind="stable")
        rows = rows.take(pa.array(order, pa.int64()))
        column = rows["vector"].combine_chunks()
        width = column.type.list_size
        vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return cls(
            handle=handle,
            version=version,
            row_ids=rows["_rowid"].to_numpy(),
            pair_ids=rows["pair_id"].combine_chunks(),
            vectors=vectors,
            norms=np.linalg.norm(vectors, axis=1),
        )

    def rows(self, where: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions, vectors, norms) of the rows passing ``where`` (every row for None)."""
        if where is None:
            return np.arange(len(self.vectors)), self.vectors, self.norms
        if self._filtered is None or self._filtered[0] != where:
            query = self.handle.search().where(where).with_row_id(True).select(["_rowid"])
            ids = np.sort(query.limit(None).to_arrow()["_rowid"].to_numpy())
            positions = np.searchsorted(self.row_ids, ids)
            self._filtered = (where, positions, self.vectors[positions], self.norms[positions])
        return self._filtered[1:]

    def search(self, queries: np.ndarray, k: int, where: str | None, chunk: int) -> pa.Table:
        """The ``k`` nearest rows passing ``where`` of each query (fewer if fewer pass):
        ``query_index``, ``pair_id``, ``_distance`` (1 − cos), by query then distance."""
        positions, vectors, norms = self.rows(where)
        take, query_index, distances = [], [], []
        for start in range(0, len(queries), chunk):
            block = queries[start : start + chunk]
            scale = np.linalg.norm(block, axis=1)[:, None] * norms[None, :]
            distance = 1.0 - (block @ vectors.T) / scale
            for i, row in enumerate(distance):
                top = _top_k(row, k)
                take.append(positions[top])
                distances.append(row[top])
                query_index.append(np.full(len(top), start + i, dtype=np.int64))
        empty = np.empty(0, np.int64)
        return pa.table(
            [
                pa.array(np.concatenate([empty, *query_index]), pa.int64()),
                self.pair_ids.take(pa.array(np.concatenate([empty, *take]), pa.int64())),
                pa.array(np.concatenate([empty.astype(np.float32), *distances]), pa.float32()),
            ],
            schema=RESULT_SCHEMA,
        )


def _top_k(distance: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest, nearest first, ties to the lower index."""
    if k <= 0:
        return np.empty(0, np.int64)
    if k >= len(distance):
        return np.argsort(distance, kind="stable")
    kth = np.partition(distance, k - 1)[k - 1]
    within = np.flatnonzero(distance <= kth)  # ascending: ties keep row order
    return within[np.argsort(distance[within], kind="stable")[:k]]
