"""Adaptive retrieval and few-shot selection on real hh-rlhf pairs embedded by the bundled MiniLM,
in a real LanceDB, checked against exact numpy search."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from synpref_core.retrieval.retrieve import (
    RetrievalConfig,
    RetrievalError,
    adaptive_k,
    eligibility_filter,
    few_shot_examples,
    retrieve_candidates,
)
from synpref_core.retrieval.store import StoreConfig, VectorStore
from synpref_core.retrieval.tables import store_rows
from tests.embed_helpers import read_pairs, read_vectors

GOLD = 30  # the first pairs become gold; the rest is the pool


def matrix(table: pa.Table) -> np.ndarray:
    return np.stack(table["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)


@pytest.fixture(scope="module")
def data(hh_embedded) -> dict:
    pairs_dir, embeddings = hh_embedded
    pairs, vectors = read_pairs(pairs_dir), read_vectors(embeddings)
    status = ["gold"] * GOLD + ["unverified"] * (pairs.num_rows - GOLD)
    pairs = pairs.set_column(pairs.schema.get_field_index("status"), "status", pa.array(status))
    return {"pairs": pairs, "vectors": vectors}


def fill(store: VectorStore, data: dict) -> None:
    pairs, vectors = data["pairs"], data["vectors"]
    store.upsert("gold", store_rows(pairs.slice(0, GOLD), vectors, "gold"))
    store.upsert("pool", store_rows(pairs.slice(GOLD), vectors, "pool"))
    store.flush()


@pytest.fixture
def store(data, tmp_path):
    with VectorStore(StoreConfig(uri=str(tmp_path / "db"))) as store:
        fill(store, data)
        yield store


def queries(data: dict, p: list[float]) -> pa.Table:
    return pa.table({"pair_id": data["pairs"]["pair_id"][: len(p)], "p": p})


def exact_top(pool: pa.Table, query: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The k nearest eligible pool rows by brute force (argsort of 1 − cosine)."""
    distance = 1.0 - matrix(pool) @ query
    order = np.argsort(distance, kind="stable")[:k]
    ids = pool["pair_id"].to_pylist()
    return [(ids[i], float(distance[i])) for i in order]


# -- k ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "k"),
    [(0.0, 8), (0.3, 8), (0.5, 8), (0.51, 4), (0.6, 4), (0.8, 2), (0.875, 1), (0.9, 1), (0.99, 1)],
)
def test_adaptive_k(p, k):
    assert adaptive_k(p) == k


def test_adaptive_k_edges():
    assert adaptive_k(1.0) == 0  # the RM is certain: nothing to learn around this pair
    assert adaptive_k(0.75, k_max=4) == 1 and adaptive_k(0.2, k_max=4) == 4
    # Products that are integers in exact arithmetic are never rounded up past them.
    for j in range(1, 4):
        assert adaptive_k(1 - j / 8) == j
    assert 10 * (1 - 0.7) > 3  # 3.0000000000000004 in floating point
    assert adaptive_k(0.7, k_max=10) == 3 and adaptive_k(0.9, k_max=10) == 1
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(RetrievalError, match="probability"):
            adaptive_k(bad)


# -- candidates -------------------------------------------------------------------------------


def test_candidates_are_the_exact_nearest_neighbours(store, data):
    p = [0.1, 0.3, 0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.99, 0.2, 0.6, 0.4]
    result = retrieve_candidates(store, queries(data, p))
    pool = store_rows(data["pairs"].slice(GOLD), data["vectors"], "pool")
    gold = matrix(store_rows(data["pairs"].slice(0, GOLD), data["vectors"], "gold"))
    expected: dict[str, tuple[float, str]] = {}
    total = 0
    for i, p_i in enumerate(p):
        top = exact_top(pool, gold[i], adaptive_k(p_i))
        total += len(top)
        for pid, distance in top:
            if pid not in expected or distance < expected[pid][0]:
                expected[pid] = (distance, data["pairs"]["pair_id"][i].as_py())
    candidates = result.candidates.to_pylist()
    assert {c["pair_id"] for c in candidates} == set(expected)
    for c in candidates:
        assert c["distance"] == pytest.approx(expected[c["pair_id"]][0], abs=1e-5)
    assert result.stats["requested"] == result.stats["retrieved"] == total
    assert result.stats["duplicates_removed"] == total - len(expected) > 0
    assert result.stats["candidates"] == len(expected)
    assert result.stats["queries_k8"] == 5 and result.stats["candidates_k1"] >= 1
    distances = result.candidates["distance"].to_numpy()
    assert (np.diff(distances) >= 0).all()  # best first
    assert result.stats["distance_min"] == pytest.approx(distances.min())


def test_no_queries_no_candidates(store, data):
    result = retrieve_candidates(store, queries(data, [1.0, 1.0]))  # k = 0 for both
    assert result.candidates.num_rows == 0 and result.stats["queries_k0"] == 2
    empty = retrieve_candidates(store, pa.table({"pair_id": pa.array([], pa.string()), "p": []}))
    assert empty.candidates.num_rows == 0 and empty.stats["queries"] == 0


def test_dedup_keeps_the_best_provenance(store, data):
    gold = store.fetch("gold", [data["pairs"]["pair_id"][0].as_py()], ["pair_id", "vector"])
    vector = matrix(gold)[0]
    nudged = vector + 0.02 * np.random.default_rng(0).standard_normal(vector.size)
    nudged /= np.linalg.norm(nudged)
    table = pa.table(
        {
            "pair_id": ["a", "b"],
            "p": [0.2, 0.3],
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(np.concatenate([vector, nudged]).astype(np.float32)), vector.size
            ),
        }
    )
    result = retrieve_candidates(store, table)
    a = {r["pair_id"]: r["_distance"] for r in store.search("pool", vector[None], 8).to_pylist()}
    b = {r["pair_id"]: r["_distance"] for r in store.search("pool", nudged[None], 8).to_pylist()}
    overlap = set(a) & set(b)
    assert overlap and result.stats["duplicates_removed"] == len(overlap)
    for row in result.candidates.to_pylist():
        pid = row["pair_id"]
        options = [(hits[pid], query) for query, hits in (("a", a), ("b", b)) if pid in hits]
        assert row["query_pair_id"] == min(options)[1]


def test_exclusions_never_leave_a_query_short(store, data):
    config = RetrievalConfig(overfetch=0)  # every exclusion forces a second, wider search
    q = queries(data, [0.1, 0.2])
    first = retrieve_candidates(store, q, config).candidates
    taken = set(first["pair_id"].to_pylist())
    silver, used = sorted(taken)[:4], sorted(taken)[4:8]
    store.update_status("pool", silver, "silver", 1)
    store.upsert("pool", _with_round(store, used, 2))  # retrieved before, status unchanged
    store.flush()
    in_flight = set(sorted(taken)[8:])
    result = retrieve_candidates(store, q, config, exclude_ids=in_flight)
    got = set(result.candidates["pair_id"].to_pylist())
    assert not got & taken
    assert result.stats["short_queries"] == 0 and result.stats["retrieved"] == 16
    assert result.stats["excluded"] > 0
    assert result.stats["eligible_rows"] == result.stats["pool_rows"] - 8
    # Rows a round took come back only when exclude_used is off (silver never does).
    again = retrieve_candidates(store, q, RetrievalConfig(exclude_used=False), in_flight)
    assert set(used) <= set(again.candidates["pair_id"].to_pylist())
    assert not set(silver) & set(again.candidates["pair_id"].to_pylist())


def _with_round(store: VectorStore, ids: list[str], round: int) -> pa.Table:
    rows = store.fetch("pool", ids)
    rows = rows.set_column(
        rows.schema.get_field_index("round"), "round", pa.array([round] * len(ids), pa.int32())
    )
    return rows


def test_a_rerun_of_a_round_finds_its_own_candidates_again(store, data):
    q = queries(data, [0.1, 0.7])
    first = retrieve_candidates(store, q, current_round=3)
    taken = first.candidates["pair_id"].to_pylist()
    store.update_status("pool", taken, "unverified", 3).result()  # the round stamps them
    again = retrieve_candidates(store, q, current_round=3)
    assert again.candidates.equals(first.candidates)
    later = retrieve_candidates(store, q, current_round=4)
    assert not set(taken) & set(later.candidates["pair_id"].to_pylist())
    assert later.stats["eligible_rows"] == first.stats["eligible_rows"] - len(taken)


def test_attribute_filters_are_a_prefilter(store, data):
    rows = store.fetch("pool", data["pairs"]["pair_id"].to_pylist()[GOLD:])
    values = ["objective" if i % 3 == 0 else "subjective" for i in range(rows.num_rows)]
    index = rows.schema.get_field_index("objectivity")
    store.upsert("pool", rows.set_column(index, "objectivity", pa.array(values))).result()
    config = RetrievalConfig(filters={"objectivity": "objective"})
    result = retrieve_candidates(store, queries(data, [0.1, 0.2, 0.3]), config)
    found = store.fetch("pool", result.candidates["pair_id"].to_pylist(), ["objectivity"])
    assert result.stats["retrieved"] == 24
    assert set(found["objectivity"].to_pylist()) == {"objective"}
    with pytest.raises(RetrievalError, match="cannot filter"):
        retrieve_candidates(store, queries(data, [0.1]), RetrievalConfig(filters={"x; --": "y"}))


def test_a_reopened_store_returns_the_same_results(store, data):
    q = queries(data, [0.1, 0.4, 0.6, 0.8, 0.95])
    before = retrieve_candidates(store, q)
    with VectorStore(StoreConfig(uri=store.config.uri)) as reopened:
        after = retrieve_candidates(reopened, q)
    assert after.candidates.equals(before.candidates)
    assert after.stats == before.stats


# -- few-shot ---------------------------------------------------------------------------------


def test_few_shot_are_the_nearest_gold_pairs_but_never_the_candidate(store, data):
    pairs, vectors = data["pairs"], data["vectors"]
    candidate = pairs.slice(GOLD, 1)
    candidate = candidate.set_column(
        candidate.schema.get_field_index("status"), "status", pa.array(["gold"])
    )
    # The candidate itself, verified (same pair_id), and a copy of its (x, attributes) with
    # other responses (another pair_id, the same vector) are both in gold now.
    copy = candidate.set_column(0, "pair_id", pa.array(["copy-of-candidate"]))
    copy_vectors = vectors.filter(pc.equal(vectors["pair_id"], candidate["pair_id"][0]))
    copy_vectors = copy_vectors.set_column(0, "pair_id", pa.array(["copy-of-candidate"]))
    store.upsert("gold", store_rows(candidate, vectors, "gold"))
    store.upsert("gold", store_rows(copy, copy_vectors, "gold"))
    store.flush()
    cid = candidate["pair_id"][0].as_py()
    examples = few_shot_examples(store, [cid, pairs["pair_id"][GOLD + 1].as_py()])
    mine = examples.filter(pc.equal(examples["candidate_id"], cid))
    assert mine["rank"].to_pylist() == list(range(1, 9))
    assert {cid, "copy-of-candidate"}.isdisjoint(mine["pair_id"].to_pylist())
    gold = store_rows(pairs.slice(0, GOLD), vectors, "gold")  # what is left to choose from
    query = matrix(store.fetch("pool", [cid], ["vector"]))[0]
    expected = exact_top(gold, query, 8)
    assert mine["pair_id"].to_pylist() == [pid for pid, _ in expected]
    np.testing.assert_allclose(mine["distance"].to_numpy(), [d for _, d in expected], atol=1e-5)
    for column in ("conversation", "chosen", "rejected", "status", "decided_by", "objectivity"):
        assert column in examples.column_names
    assert set(mine["status"].to_pylist()) == {"gold"}
    assert examples.num_rows == 16


# -- the in-memory exact path -----------------------------------------------------------------


def lancedb_flat(uri: str, table: str, vectors: np.ndarray, k: int, where: str | None) -> list:
    """LanceDB's own exact scan, one query at a time: [(pair_id, distance), ...] per query."""
    import lancedb

    handle = lancedb.connect(uri).open_table(table)
    found = []
    for vector in vectors:
        query = handle.search(vector, vector_column_name="vector").distance_type("cosine")
        query = query.bypass_vector_index().limit(k).select(["pair_id", "_distance"])
        rows = (query.where(where, prefilter=True) if where else query).to_arrow()
        ids, distances = rows["pair_id"].to_pylist(), rows["_distance"].to_pylist()
        found.append(list(zip(ids, distances, strict=True)))
    return found


def test_in_memory_search_equals_lancedb_flat_search(store, data):
    """Below ann.min_rows the store searches a copy in memory: the same rows as LanceDB's flat
    scan under the retrieval's filters, ties included, and a write is seen at once."""
    pool_ids = data["pairs"]["pair_id"].to_pylist()[GOLD:]
    rows = store.fetch("pool", pool_ids)
    values = ["objective" if i % 3 == 0 else "subjective" for i in range(rows.num_rows)]
    index = rows.schema.get_field_index("objectivity")
    store.upsert("pool", rows.set_column(index, "objectivity", pa.array(values))).result()
    copies = rows.take([25, 25, 26]).set_column(0, "pair_id", pa.array(["c1", "c2", "c3"]))
    store.upsert("pool", copies).result()  # equal vectors: ties at every distance
    store.update_status("pool", pool_ids[:10], "silver", 1)
    store.update_status("pool", pool_ids[10:20], "unverified", 2).result()
    vectors = matrix(data["vectors"])  # gold queries, and pool rows that find themselves at 0
    queries = np.concatenate([vectors[:GOLD], vectors[GOLD : GOLD + 20]])
    filters = [
        None,
        eligibility_filter(RetrievalConfig()),
        eligibility_filter(RetrievalConfig(), current_round=2),
        eligibility_filter(RetrievalConfig(filters={"objectivity": "objective"})),
        "status = 'nothing'",
    ]

    def same(table: str, k: int, where: str | None) -> int:
        got = store.search(table, queries, k, where)
        expected = lancedb_flat(store.config.uri, table, queries, k, where)
        for i, rows in enumerate(expected):
            mine = got.filter(pc.equal(got["query_index"], i))
            assert mine["pair_id"].to_pylist() == [pid for pid, _ in rows], (where, i)
            distances = [d for _, d in rows]
            np.testing.assert_allclose(mine["_distance"].to_numpy(), distances, atol=1e-5)
        assert got["query_index"].to_pylist() == sorted(got["query_index"].to_pylist())
        return got.num_rows

    for where in filters:
        for k in (8, 1000):  # 1000: more than pass, so every passing row in order
            same("pool", k, where)
    assert same("gold", 8, None) == len(queries) * 8
    assert "pool" in store._flat  # it was the in-memory path that answered

    store.update_status("pool", pool_ids[20:40], "silver", 3).result()  # a write: a new version
    eligible = len(pool_ids) + len(copies) - 40
    assert same("pool", 1000, eligibility_filter(RetrievalConfig())) == len(queries) * eligible
