"""The retrieve flow end to end, two rounds: real Prefect, Ray actors embedding with the bundled
MiniLM, a real LanceDB store, a tiny real RM scoring gold, MLflow on SQLite."""

from __future__ import annotations

import pytest

from synpref_core.retrieval.retrieve import adaptive_k
from synpref_core.retrieval.round import read_candidates
from synpref_core.retrieval.store import VectorStore
from synpref_core.stages import iter_batches
from tests.flow_helpers import tiny_retrieve_config


def _ids(stage: str) -> set[str]:
    return {i for b in iter_batches(stage, columns=["pair_id"]) for i in b["pair_id"].to_pylist()}


@pytest.mark.slow
def test_two_rounds_retrieve_disjoint_candidates(tmp_path, prefect_server, ray_local):
    import mlflow

    from flows.retrieve import retrieve_flow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_retrieve_config(tmp_path, experiment="retrieve")
    first = retrieve_flow(config)
    pool, gold = (
        _ids(str(tmp_path / "retrieve" / "pool")),
        _ids(str(tmp_path / "retrieve" / "gold")),
    )
    candidates = read_candidates(first["candidates"])
    stats = first["stats"]
    assert len(pool) == 80 and stats["queries"] == len(gold) > 90
    ids = candidates["pair_id"].to_pylist()
    assert len(ids) == len(set(ids)) == stats["candidates"] > 0
    assert set(ids) <= pool and not set(ids) & gold
    assert set(candidates["query_pair_id"].to_pylist()) <= gold
    # each candidate's k follows its query's p; every query got its k (the pool is large enough
    # for the first round) and dedup accounts for the rest
    for p, k in zip(candidates["p"].to_pylist(), candidates["k"].to_pylist(), strict=True):
        assert k == adaptive_k(p)
    assert stats["retrieved"] == stats["candidates"] + stats["duplicates_removed"]
    assert set(candidates["round"].to_pylist()) == {1}

    with VectorStore(config.store) as store:
        stamped = store.fetch("pool", ids, ["pair_id", "round", "status"])
        assert set(stamped["round"].to_pylist()) == {1}
        assert set(stamped["status"].to_pylist()) == {"unverified"}
        assert store.count("gold") == len(gold) and store.count("pool") == len(pool)

    second = retrieve_flow(config.model_copy(update={"round": 2}))
    again = read_candidates(second["candidates"])
    assert not set(again["pair_id"].to_pylist()) & set(ids)  # used in round 1: never again
    assert set(again["pair_id"].to_pylist()) <= pool

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("retrieve").experiment_id])
    assert sorted(r.data.tags["round"] for r in runs) == ["1", "2"]
    metrics = next(r for r in runs if r.data.tags["round"] == "1").data.metrics
    assert metrics["retrieval_candidates"] == stats["candidates"]
    assert metrics["store_pool_rows"] == 80 and "retrieval_distance_p50" in metrics
