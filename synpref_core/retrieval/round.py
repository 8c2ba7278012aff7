"""One round of error-driven retrieval as a stage: gold confidences in, pool candidates out.

    RetrieveStage(RoundConfig(scores=".../gold-scores", store=StoreConfig(...), round=3,
                              out=".../round-3/candidates"))

Input: a finished scoring stage of the gold pairs (``pair_id``, ``p`` from the current best RM,
:mod:`synpref_core.rm.scoring`) and a vector store whose ``pool`` and ``gold`` tables hold the
embedded pairs. Output: one Parquet shard of candidates (``CANDIDATE_SCHEMA`` plus ``round``), its
marker and a manifest whose ``counts`` are the retrieval statistics (queries, candidates by k,
duplicates removed, distance quantiles), ready for MLflow.

After the shard is written, the candidates' pool rows are stamped with ``round`` (status
unchanged), so later rounds skip them; the stamp is idempotent and a re-run of the same round
still sees its own candidates as eligible (rows stamped with this round or a later one are).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from synpref_core.config import StrictModel
from synpref_core.io import fs as fsio
from synpref_core.retrieval.retrieve import CANDIDATE_SCHEMA, RetrievalConfig, retrieve_candidates
from synpref_core.retrieval.store import StoreConfig, VectorStore
from synpref_core.schema import fingerprint
from synpref_core.stages import (
    ShardResult,
    Stage,
    iter_batches,
    load_manifest,
    part_name,
    stage_identity,
)

ROUND_CANDIDATE_SCHEMA = CANDIDATE_SCHEMA.append(pa.field("round", pa.int32(), nullable=False))


class RoundConfig(StrictModel):
    scores: str = Field(description="Scoring stage of the gold pairs (pair_id, p).")
    store: StoreConfig = Field(default_factory=StoreConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    round: int = Field(1, ge=1, description="The curation round these candidates belong to.")
    out: str = Field(description="Output stage directory.")


class RetrieveStage(Stage):
    """A single shard: retrieval is one batched search over every gold query."""

    name = "retrieve"

    def __init__(self, config: RoundConfig):
        scores = load_manifest(config.scores)
        super().__init__(
            out=config.out,
            config=config.model_dump(mode="json"),
            # new confidences (the scores' run id), new candidates
            config_hash=stage_identity(self.name, config, {"out"}, [scores]),
            parents=[config.scores],
        )
        self.retrieve = config

    def schemas(self) -> dict[str, str]:
        return {"data": fingerprint(ROUND_CANDIDATE_SCHEMA)}

    def plan(self) -> list[dict[str, Any]]:
        return [{"round": self.retrieve.round}]

    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        batches = list(iter_batches(self.retrieve.scores, columns=["pair_id", "p"]))
        queries = pa.Table.from_batches(batches) if batches else None
        if queries is None or queries.num_rows == 0:
            raise ValueError(f"{self.retrieve.scores}: no scored gold pairs to query with")
        round_ = self.retrieve.round
        with VectorStore(self.retrieve.store) as store:
            result = retrieve_candidates(
                store, queries, self.retrieve.retrieval, current_round=round_
            )
            candidates = result.candidates.append_column(
                "round", pa.array([round_] * result.candidates.num_rows, pa.int32())
            )
            fs, root = fsio.resolve(self.out)
            rel = f"data/{part_name(index)}.parquet"
            with fsio.AtomicParquetWriter(
                fs, fsio.join(root, rel), ROUND_CANDIDATE_SCHEMA
            ) as writer:
                writer.write(candidates)
            ids = candidates["pair_id"].to_pylist()
            statuses = _statuses(store, ids)
            for status, group in statuses.items():
                store.update_status("pool", group, status, round_)
            store.flush()
        return {
            "shard": index,
            "files": [{"path": rel, "kind": "data", "rows": writer.rows, "bytes": writer.size()}],
            "counts": dict(result.stats),
        }


def _statuses(store: VectorStore, ids: list[str]) -> dict[str, list[str]]:
    """Candidates grouped by their current pool status (the round stamp keeps it)."""
    if not ids:
        return {}
    rows = store.fetch("pool", ids, ["pair_id", "status"])
    groups: dict[str, list[str]] = {}
    for pid, status in zip(rows["pair_id"].to_pylist(), rows["status"].to_pylist(), strict=True):
        groups.setdefault(status, []).append(pid)
    return groups


def read_candidates(stage: str) -> pa.Table:
    """Every candidate of a finished retrieve stage, nearest first."""
    batches = list(iter_batches(stage))
    table = pa.Table.from_batches(batches, schema=ROUND_CANDIDATE_SCHEMA)
    return table.take(pc.sort_indices(table, [("distance", "ascending"), ("pair_id", "ascending")]))
