"""Prefect task shells of retrieval: embed pairs, load them into the store, compact it, score
gold pairs with the RM, retrieve a round's candidates. Each returns a manifest URI or counts."""

from __future__ import annotations

from prefect import task

from synpref_core.config import ExecutorConfig
from synpref_core.executors import run
from synpref_core.retrieval.embed import EmbedConfig, EmbedStage
from synpref_core.retrieval.round import RetrieveStage, RoundConfig
from synpref_core.retrieval.store import StoreConfig, VectorStore
from synpref_core.rm.scoring import ScoreConfig, ScoreStage


@task(name="embed-pairs")
def embed(config: EmbedConfig, executor: ExecutorConfig) -> str:
    """Embed a pair stage (Ray actors holding the model; finished shards skipped)."""
    return run(EmbedStage(config), executor)


@task(name="index-embeddings")
def index_embeddings(store: StoreConfig, embeddings: list[str]) -> dict[str, int]:
    """Upsert embedding stages into the store through its single writer; then compact each
    table and build its ANN index once it is large enough. Returns rows per table."""
    counts = {"pool": 0, "gold": 0}
    with VectorStore(store) as vectors:
        for manifest in embeddings:
            for table, rows in vectors.add_embeddings(manifest).items():
                counts[table] += rows
        for table in ("pool", "gold"):
            if vectors.exists(table):
                counts[f"{table}_rows"] = vectors.optimize(table)["rows"]
                counts[f"{table}_indexed"] = int(vectors.has_index(table))
    return counts


@task(name="score-gold")
def score_gold(config: ScoreConfig, executor: ExecutorConfig) -> str:
    """p = σ(r_chosen − r_rejected) of every gold pair under the current best RM."""
    return run(ScoreStage(config), executor)


@task(name="retrieve-candidates")
def retrieve(config: RoundConfig) -> str:
    """Adaptive-k retrieval of pool candidates for one round; returns the manifest URI."""
    # One shard that reads the store: in this process, whatever the executor.
    return run(RetrieveStage(config), ExecutorConfig(kind="local"))
