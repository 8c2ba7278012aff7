"""retrieve flow: one round of Stage 1's error-driven adaptive retrieval (DESIGN §2, step 2).

Run locally on embedded defaults (after ``make flow-train-rm`` has registered an RM):

    python -m flows.retrieve                      # or: make flow-retrieve
    python -m flows.retrieve --config round.yaml  # a RetrieveFlowConfig YAML

Steps: select the unverified pool and the gold pairs of an ingested stage (default: the bundled
data: hh-rlhf harmless as the pool, PandaLM + LLMBar as gold); embed both as (conversation,
attributes) text with MiniLM-L6 on Ray actors; upsert them into the LanceDB store through its
single writer, compact it and build the ANN index once a table reaches ``ann.min_rows``; score
every gold pair with the current best RM (p = σ(r_w − r_l)); retrieve k = 8 pool neighbours for a
gold pair the RM gets wrong and ⌈8(1 − p)⌉ otherwise, skipping gold, silver and already-used
pairs and deduplicating across queries; stamp the candidates with the round. One MLflow run
holds the config, the manifests and the round's metrics (queries, candidates by k, duplicates
removed, distance quantiles); the candidates-by-k table is also a Prefect artifact.

At scale: ``store.uri`` on object storage (``s3://...`` with ``store.storage_options``),
``runtime.executor.ray_address`` for the embedding and scoring actors, ``embedding.model`` any
sentence-transformers model, ``rm`` a registered model (``models:/synpref-rm/7``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from pydantic import Field

from flows.ingest import bundled_ingest_config
from synpref_core import tracking
from synpref_core.config import IngestConfig, RuntimeConfig, StrictModel, load_config
from synpref_core.curation.select import PairFilter, SelectConfig
from synpref_core.io.lock import output_lock
from synpref_core.retrieval.embed import EmbedConfig
from synpref_core.retrieval.retrieve import RetrievalConfig
from synpref_core.retrieval.round import RoundConfig
from synpref_core.retrieval.store import StoreConfig
from synpref_core.rm.registry import resolve_model
from synpref_core.rm.scoring import ScoreConfig
from synpref_core.rm.train import MODEL_NAME
from tasks.ingest import dedup, normalize
from tasks.retrieval import embed, index_embeddings, retrieve, score_gold
from tasks.select import select_pairs
from tasks.tracking import record_manifest


class RetrieveFlowConfig(StrictModel):
    """One retrieval round. Every default is a value (not a factory), so the Prefect form shows
    it; change one field and keep the rest."""

    pairs: str | None = Field(
        None, description="Ingested pair stage; None: ingest `ingest` first (skipped when done)."
    )
    ingest: IngestConfig = Field(
        bundled_ingest_config(), description="Used only when `pairs` is None (default: bundled)."
    )
    pool_on: PairFilter = Field(
        PairFilter(statuses=["unverified"]), description="D_un: the pool searched."
    )
    gold_on: PairFilter = Field(PairFilter(statuses=["gold"]), description="D_gold: the queries.")
    rm: str | None = Field(
        None,
        description="Best RM: a directory, or models:/NAME/VERSION; None: the latest version "
        "of `model_name` in MLflow.",
    )
    model_name: str = Field(MODEL_NAME, description="Registered RM used when `rm` is None.")
    rm_max_length: int | None = Field(
        None,
        ge=8,
        description="Tokens per side when scoring gold; None: what the RM was trained with.",
    )
    embed_model: str = Field("minilm", description="sentence-transformers model: name or path.")
    store: StoreConfig = Field(StoreConfig(), description="The LanceDB vector store.")
    retrieval: RetrievalConfig = Field(RetrievalConfig(), description="Adaptive k and filters.")
    round: int = Field(1, ge=1, description="The curation round.")
    out: str = Field(".synpref/retrieve", description="Selections, embeddings, scores, rounds.")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="Executor and MLflow.")


@flow(name="retrieve")
def retrieve_flow(config: RetrieveFlowConfig = RetrieveFlowConfig()) -> dict[str, Any]:  # noqa: B008
    """Embed, index, score gold, retrieve; returns the candidates manifest and the stats.

    Args:
        config: The round: pairs (or what to ingest), the RM, the store and the round number.
    """
    executor, out = config.runtime.executor, Path(config.out)
    tags = {
        "flow": "retrieve",
        "round": str(config.round),
        "prefect_flow_run_id": str(flow_run.id or ""),
    }
    with tracking.start_run(config.runtime.tracking, f"retrieve-round-{config.round}", tags):
        tracking.log_config(config)
        pairs = config.pairs
        if pairs is None:
            with output_lock(config.ingest.out):  # no other run between the two stages
                pairs = dedup(config.ingest, executor, normalize(config.ingest, executor))
        selected, embedded = {}, {}
        for role, where in (("pool", config.pool_on), ("gold", config.gold_on)):
            spec = SelectConfig(input=pairs, out=str(out / role), **where.model_dump())
            selected[role] = select_pairs(spec, executor)
            record_manifest(selected[role], prefix=f"{role}.")
            embedding = EmbedConfig(
                model=config.embed_model, pairs=selected[role], out=str(out / "embeddings" / role)
            )
            embedded[role] = embed(embedding, executor)
        stored = index_embeddings(config.store, [embedded["pool"], embedded["gold"]])
        tracking.log_counts(stored, "store.")
        rm = resolve_model(config.rm, config.model_name, config.runtime.tracking, out / "rm")
        scoring = ScoreConfig(
            model=rm,
            pairs=selected["gold"],
            out=str(out / f"round-{config.round}" / "gold-scores"),
            max_length=config.rm_max_length,
        )
        scores = score_gold(scoring, executor)
        candidates = retrieve(
            RoundConfig(
                scores=scores,
                store=config.store,
                retrieval=config.retrieval,
                round=config.round,
                out=str(out / f"round-{config.round}" / "candidates"),
            )
        )
        stats = record_manifest(candidates, prefix="retrieval.")
        by_k = [
            {"k": key.removeprefix("candidates_k"), "candidates": value}
            for key, value in sorted(stats.items())
            if key.startswith("candidates_k")
        ]
        create_table_artifact(
            key=f"round-{config.round}-candidates-by-k",
            table=by_k,
            description="Pool candidates retrieved by gold pairs asking for k neighbours",
        )
    return {"candidates": candidates, "rm": rm, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="RetrieveFlowConfig YAML (default: embedded)")
    parser.add_argument("--round", type=int, help="overrides the config's round")
    args = parser.parse_args()
    config = load_config(args.config, RetrieveFlowConfig) if args.config else RetrieveFlowConfig()
    if args.round:
        config = config.model_copy(update={"round": args.round})
    summary = retrieve_flow(config)
    stats = summary["stats"]
    print(f"rm: {summary['rm']}")
    print(
        f"round {config.round}: {stats['queries']} gold queries ({stats['queries_wrong']} wrong), "
        f"{stats['candidates']} candidates, {stats['duplicates_removed']} duplicates removed"
    )
    print(f"candidates: {summary['candidates']}")


if __name__ == "__main__":
    main()
