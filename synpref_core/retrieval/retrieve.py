"""Error-driven adaptive retrieval (DESIGN §2, step 2) and few-shot gold examples (step 3).

**Adaptive k.** For a gold pair the best RM gives confidence p = σ(r_w − r_l): it retrieves
``k_max`` pool neighbours when p ≤ 0.5 (the RM got it wrong) and ⌈k_max · (1 − p)⌉ otherwise
(:func:`adaptive_k`).

**Candidates** (:func:`retrieve_candidates`). All gold queries are searched in batches against
``pool``. A pool row is eligible when its ``status`` is one of ``eligible_statuses`` and, with
``exclude_used``, no earlier round has taken it (``round`` null, or not before the
``current_round`` retrieving, so a re-run of a round finds its own candidates again); both are a
LanceDB prefilter, with optional attribute filters (``objectivity = 'objective'``).
``exclude_ids`` (pairs in flight, say) are removed after the search; each query fetches
``k + overfetch`` rows and asks again with a doubled limit while exclusions leave it short and the
pool has more, so a query gets its k whenever k eligible rows exist. Across queries a candidate
is kept once, with its best (smallest-distance) provenance; the rest are counted as duplicates.

**Few-shot** (:func:`few_shot_examples`). For each candidate, the ``m`` ≤ 8 most similar gold
pairs, never the candidate itself (same ``pair_id``) nor a copy of its (x, attributes): a gold
pair closer than ``duplicate_distance`` is skipped. Returned with their attributes, status,
``decided_by`` and chosen / rejected as stored (the human verdict: chosen is the preferred side).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pydantic import Field

from synpref_core.config import StrictModel
from synpref_core.retrieval.store import VectorStore
from synpref_core.retrieval.tables import FILTER_COLUMNS, GOLD_TEXT, sql_string

# ⌈x⌉ of a product that is an integer in exact arithmetic but lands a hair above it in floating
# point (8 · (1 − 0.7) = 2.4000000000000004 is fine; 8 · (1 − 0.875) must give exactly 1).
_CEIL_SLACK = 1e-9

CANDIDATE_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),  # the pool candidate
        pa.field("query_pair_id", pa.string(), nullable=False),  # the gold pair that found it
        pa.field("p", pa.float64(), nullable=False),  # that gold pair's confidence
        pa.field("k", pa.int32(), nullable=False),  # neighbours it asked for
        pa.field("distance", pa.float32(), nullable=False),  # cosine distance
        pa.field("rank", pa.int32(), nullable=False),  # 1 = nearest eligible row of its query
    ]
)


class RetrievalError(ValueError):
    """Retrieval inputs are inconsistent (bad p, missing gold vectors, mixed models)."""


class RetrievalConfig(StrictModel):
    """Adaptive retrieval (DESIGN §2) and few-shot selection; (ours) where the paper is silent."""

    k_max: int = Field(8, ge=1, description="Neighbours of a gold pair the RM got wrong.")
    eligible_statuses: tuple[str, ...] = Field(
        ("unverified",), min_length=1, description="Pool statuses that may be retrieved."
    )
    exclude_used: bool = Field(True, description="Skip pool rows a round already took.")
    filters: dict[str, str] = Field(
        default_factory=dict, description="Attribute equalities, e.g. objectivity: objective."
    )
    overfetch: int = Field(8, ge=0, description="Extra rows fetched per query for exclusions.")
    few_shot: int = Field(8, ge=0, le=8, description="Gold examples per candidate (m ≤ 8).")
    duplicate_distance: float = Field(
        1e-6, ge=0, description="A gold pair closer than this is the candidate's duplicate."
    )


@dataclass(frozen=True)
class RetrievalResult:
    candidates: pa.Table  # CANDIDATE_SCHEMA, sorted by distance
    stats: dict[str, float]  # flat, for MLflow


def adaptive_k(p: float, k_max: int = 8) -> int:
    """k_max when p ≤ 0.5, else ⌈k_max · (1 − p)⌉ (0 only at p = 1)."""
    if not 0.0 <= p <= 1.0:  # NaN fails this too
        raise RetrievalError(f"p must be a probability, got {p}")
    if p <= 0.5:
        return k_max
    return max(0, math.ceil(k_max * (1.0 - p) - _CEIL_SLACK))


def eligibility_filter(config: RetrievalConfig, current_round: int | None = None) -> str:
    """The LanceDB prefilter of pool rows a query may return. With ``current_round``, rows
    stamped with that round or a later one stay eligible, so re-running a round is idempotent."""
    statuses = ", ".join(sql_string(s) for s in config.eligible_statuses)
    clauses = [f"status IN ({statuses})"]
    if config.exclude_used and current_round is None:
        clauses.append("`round` IS NULL")
    elif config.exclude_used:
        clauses.append(f"(`round` IS NULL OR `round` >= {int(current_round)})")
    for column, value in sorted(config.filters.items()):
        if column not in FILTER_COLUMNS:
            raise RetrievalError(f"cannot filter on {column!r}; one of {FILTER_COLUMNS}")
        clauses.append(f"{column} = {sql_string(value)}")
    return " AND ".join(clauses)


def nearest_kept(
    store: VectorStore,
    table: str,
    vectors: np.ndarray,
    ks: np.ndarray,
    where: str | None,
    keep: Callable[[int, str, float], bool],
    overfetch: int,
) -> tuple[list[list[tuple[str, float]]], int]:
    """For query i, its ``ks[i]`` nearest rows passing ``where`` and ``keep(i, pair_id,
    distance)``, as (pair_id, distance) lists; plus how many rows ``keep`` refused before each
    query's cut. Queries left short by ``keep`` are asked again with twice the limit."""
    found: list[list[tuple[str, float]]] = [[] for _ in range(len(vectors))]
    refused = 0
    todo = np.flatnonzero(ks > 0)
    limit = int(ks.max(initial=0)) + overfetch
    while todo.size:
        hits = store.search(table, vectors[todo], limit, where)
        query = hits["query_index"].to_numpy()
        ids, distances = hits["pair_id"].to_pylist(), hits["_distance"].to_numpy()
        short = []
        for j, i in enumerate(todo):
            rows = np.flatnonzero(query == j)
            kept, dropped = _take(i, ks[i], rows, ids, distances, keep)
            found[i], exhausted = kept, len(rows) < limit
            if len(kept) < ks[i] and not exhausted:
                short.append(i)
            else:
                refused += dropped
        todo, limit = np.array(short, dtype=np.int64), limit * 2
    return found, refused


def _take(i, k, rows, ids, distances, keep) -> tuple[list[tuple[str, float]], int]:
    kept, dropped = [], 0
    for r in rows:
        if len(kept) == k:
            break
        if keep(i, ids[r], float(distances[r])):
            kept.append((ids[r], float(distances[r])))
        else:
            dropped += 1
    return kept, dropped


def retrieve_candidates(
    store: VectorStore,
    queries: pa.Table,
    config: RetrievalConfig | None = None,
    exclude_ids: set[str] | frozenset[str] = frozenset(),
    *,
    current_round: int | None = None,
) -> RetrievalResult:
    """Pool candidates for gold ``queries`` (columns ``pair_id``, ``p``, optional ``vector``;
    without vectors, the gold table's are used), deduplicated, with provenance and stats.

    ``exclude_ids``: pool pairs never to return. ``current_round``: the round retrieving; pool
    rows already stamped with it (a re-run) stay eligible, see :func:`eligibility_filter`."""
    config = config or RetrievalConfig()
    _same_space(store)
    ids = queries["pair_id"].to_pylist()
    p = queries["p"].to_numpy(zero_copy_only=False).astype(np.float64)
    ks = np.array([adaptive_k(float(x), config.k_max) for x in p], dtype=np.int64)
    vectors = _query_vectors(store, queries, ids)
    where = eligibility_filter(config, current_round)
    found, excluded = nearest_kept(
        store,
        "pool",
        vectors,
        ks,
        where,
        lambda _i, pid, _d: pid not in exclude_ids,
        config.overfetch,
    )
    rows = [
        (pid, ids[i], float(p[i]), int(ks[i]), dist, rank)
        for i, hits in enumerate(found)
        for rank, (pid, dist) in enumerate(hits, start=1)
    ]
    rows.sort(key=lambda r: (r[4], r[1], r[0]))  # best provenance first, deterministic ties
    best: dict[str, tuple] = {}
    for row in rows:
        best.setdefault(row[0], row)
    candidates = pa.Table.from_pylist(
        [dict(zip(CANDIDATE_SCHEMA.names, row, strict=True)) for row in best.values()],
        schema=CANDIDATE_SCHEMA,
    )
    stats = _stats(ks, p, found, candidates, len(rows) - len(best), excluded)
    stats["pool_rows"] = store.count("pool")
    stats["eligible_rows"] = store.count("pool", where)
    return RetrievalResult(candidates=candidates, stats=stats)


def _same_space(store: VectorStore) -> None:
    pool, gold = store.model_of("pool"), store.model_of("gold")
    if pool is None or gold is None:
        raise RetrievalError(f"the store needs both tables; pool: {pool}, gold: {gold}")
    if pool != gold:
        raise RetrievalError(f"pool vectors are {pool}, gold vectors {gold}: re-embed one side")


def _query_vectors(store: VectorStore, queries: pa.Table, ids: list[str]) -> np.ndarray:
    if "vector" in queries.column_names:
        return _matrix(queries["vector"])
    gold = store.fetch("gold", ids, ["pair_id", "vector"])
    position = {pid: i for i, pid in enumerate(gold["pair_id"].to_pylist())}
    missing = [pid for pid in ids if pid not in position]
    if missing:
        raise RetrievalError(f"{len(missing)} query pairs are not in gold, e.g. {missing[:3]}")
    return _matrix(gold["vector"])[[position[pid] for pid in ids]]


def _matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32).reshape(len(array), array.type.list_size)


def _stats(ks, p, found, candidates, duplicates, excluded) -> dict[str, float]:
    got = np.array([len(h) for h in found], dtype=np.int64)
    stats: dict[str, float] = {
        "queries": len(ks),
        "queries_wrong": int((p <= 0.5).sum()),
        "requested": int(ks.sum()),
        "retrieved": int(got.sum()),
        "candidates": candidates.num_rows,
        "duplicates_removed": duplicates,
        "excluded": excluded,
        "short_queries": int((got < ks).sum()),
    }
    for k in range(int(ks.max(initial=0)) + 1):
        stats[f"queries_k{k}"] = int((ks == k).sum())
    by_k = candidates["k"].to_numpy()
    for k in np.unique(by_k):
        stats[f"candidates_k{k}"] = int((by_k == k).sum())
    distance = candidates["distance"].to_numpy()
    for name, q in (("min", 0.0), ("p50", 0.5), ("p90", 0.9), ("max", 1.0)):
        stats[f"distance_{name}"] = float(np.quantile(distance, q)) if distance.size else 0.0
    return stats


def few_shot_examples(
    store: VectorStore,
    candidate_ids: Sequence[str],
    config: RetrievalConfig | None = None,
    vectors: np.ndarray | None = None,
) -> pa.Table:
    """The ``config.few_shot`` gold pairs nearest each candidate, nearest first.

    Columns: ``candidate_id``, ``rank``, ``distance``, then the gold pair's ``pair_id``,
    attributes, ``status``, ``decided_by``, ``conversation``, ``chosen``, ``rejected``.
    Candidate vectors are read from ``pool`` unless given (then they must be in the gold
    table's vector space, and the pool table need not exist).
    """
    config = config or RetrievalConfig()
    ids = list(candidate_ids)
    if vectors is None:
        _same_space(store)
        pool = store.fetch("pool", ids, ["pair_id", "vector"])
        position = {pid: i for i, pid in enumerate(pool["pair_id"].to_pylist())}
        if missing := [pid for pid in ids if pid not in position]:
            raise RetrievalError(f"{len(missing)} candidates are not in pool, e.g. {missing[:3]}")
        vectors = _matrix(pool["vector"])[[position[pid] for pid in ids]]

    def keep(i: int, pid: str, distance: float) -> bool:
        return pid != ids[i] and distance >= config.duplicate_distance

    ks = np.full(len(ids), config.few_shot, dtype=np.int64)
    found, _ = nearest_kept(store, "gold", vectors, ks, None, keep, config.overfetch)
    return _with_gold_columns(store, ids, found)


def _with_gold_columns(store: VectorStore, ids: list[str], found) -> pa.Table:
    links = [
        (ids[i], rank, dist, pid)
        for i, hits in enumerate(found)
        for rank, (pid, dist) in enumerate(hits, start=1)
    ]
    columns = ["pair_id", *FILTER_COLUMNS, "status", *GOLD_TEXT]
    gold = store.fetch("gold", sorted({link[3] for link in links}), columns)
    position = {pid: i for i, pid in enumerate(gold["pair_id"].to_pylist())}
    examples = gold.take(pa.array([position[link[3]] for link in links], pa.int64()))
    head = {
        "candidate_id": pa.array([link[0] for link in links], pa.string()),
        "rank": pa.array([link[1] for link in links], pa.int32()),
        "distance": pa.array([link[2] for link in links], pa.float32()),
    }
    for n, (name, column) in enumerate(head.items()):
        examples = examples.add_column(n, name, column)
    return examples
