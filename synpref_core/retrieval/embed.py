"""Embedding stage: every pair of a finished pair manifest → one unit vector of (x, attributes).

:class:`EmbedStage` writes one Parquet shard per data file of the input manifest, same order
(``embed_schema``: ``pair_id``, ``vector`` fixed_size_list<float32>[dim], ``model``,
``model_version``, ``tokens``), with markers and a manifest like every stage. Within a shard,
``batch_rows`` pairs at a time are rendered (:func:`~synpref_core.retrieval.encoder.render_text`),
sorted by token length, embedded in token-budget batches and put back in input order.

The model's fingerprint (:func:`~synpref_core.retrieval.encoder.model_version`: its files, the
text template and its settings) is part of the stage's identity and is written on every row: a
changed model re-embeds every shard on the next run instead of mixing vector spaces, and the
store refuses rows of a fingerprint other than its own.

Run locally::

    embed_pairs(EmbedConfig(pairs="OUT/ingest", out="OUT/embeddings"), ExecutorConfig())

At scale, ``ExecutorConfig(kind="ray", ...)`` with ``EmbedConfig(actors=N)`` starts N Ray actors
of ``cpus_per_shard`` CPUs (add GPUs through the cluster's defaults) that load the model once
and take shards until none is left; ``run_stage`` with the plain Ray executor works too (one
task per shard, the model cached per worker process). Torch threads per process follow
``$SYNPREF_TORCH_THREADS`` or the CPUs given, as in scoring.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from synpref_core.config import DEFAULT_HOME, ExecutorConfig, StrictModel, config_hash
from synpref_core.executors import run_stage, run_stage_on_actors
from synpref_core.io import fs as fsio
from synpref_core.retrieval.encoder import (
    DEFAULT_ATTRIBUTES,
    Encoder,
    embed_texts,
    load_encoder,
    model_version,
    render_text,
)
from synpref_core.rm.model import DEFAULT_BACKBONE

# The scorer's token budget (4,096 padded tokens, measured fastest for MiniLM on CPU): the same
# encoder stack, the same batching.
from synpref_core.rm.scoring import DEFAULT_TOKEN_BUDGET, torch_threads, using_torch_threads
from synpref_core.schema import fingerprint
from synpref_core.stages import ShardResult, Stage, load_manifest, part_name

log = logging.getLogger(__name__)

AttributeName = Literal[
    "task_category", "objectivity", "controversiality", "desired_attributes", "annotation_guideline"
]


def embed_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("pair_id", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),  # L2-normalised
            pa.field("model", pa.string(), nullable=False),  # as configured: name or path
            pa.field("model_version", pa.string(), nullable=False),  # vector-space fingerprint
            pa.field("tokens", pa.int32(), nullable=False),  # after truncation
        ]
    )


class EmbedConfig(StrictModel):
    """What to embed with which model. Its hash (less ``out``, ``actors``) and the model's
    fingerprint name the output."""

    model: str = Field(DEFAULT_BACKBONE, description="sentence-transformers model: name or path.")
    attributes: tuple[AttributeName, ...] = Field(
        DEFAULT_ATTRIBUTES, description="Attributes appended to the text, in this order (ours)."
    )
    max_chars: int = Field(
        4000, ge=64, description="Conversation characters kept (the end) before tokenising."
    )
    token_budget: int = Field(
        DEFAULT_TOKEN_BUDGET, ge=64, description="Most tokens (padding included) per batch."
    )
    pairs: str = Field(description="Input: a finished pair stage (its directory or manifest).")
    out: str = Field(str(DEFAULT_HOME / "embeddings"), description="Output directory or URI.")
    actors: int = Field(2, ge=1, description="Ray executor: actors, each holding one model.")
    batch_rows: int = Field(4096, ge=1, description="Pairs read, sorted and embedded at a time.")


class EmbedStage(Stage):
    """One output shard per data file of the input pair manifest, in the same order."""

    name = "embed"

    def __init__(self, config: EmbedConfig, threads: int | None = None):
        parent = load_manifest(config.pairs)  # fails here, naming the path, if unfinished
        self.model_version = model_version(config.model, config.attributes, config.max_chars)
        identity = config_hash(config.model_copy(update={"out": "", "actors": 1}))
        payload = [identity, parent.run_id, self.model_version]
        super().__init__(
            out=config.out,
            config=config.model_dump(mode="json"),
            config_hash=hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16],
            parents=[parent.uri],
        )
        self.embed = config
        self.pairs_dir = parent.dir
        self.threads = threads  # how this process runs, never what it computes

    def schemas(self) -> dict[str, str]:
        # The width of the vectors is the model's: read it from what the shards wrote.
        fs, root = self._fs()
        first = fsio.join(root, "data", part_name(0) + ".parquet")
        if not fsio.exists(fs, first):
            return {}
        with fs.open_input_file(first) as f:
            return {"data": fingerprint(pq.read_schema(f))}

    def plan(self) -> list[dict[str, Any]]:
        parent = load_manifest(self.embed.pairs)
        return [{"input": f["path"], "rows": f["rows"]} for f in parent.entries("data")]

    def load_model(self) -> Encoder:
        return load_encoder(self.embed.model)

    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        with using_torch_threads(self.threads):
            return self._run_shard(index, spec)

    def _run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        encoder = self.load_model()
        schema = embed_schema(encoder.dim)
        in_fs, in_path = fsio.resolve(fsio.join(self.pairs_dir, spec["input"]))
        fs, root = fsio.resolve(self.out)
        rel = f"data/{part_name(index)}.parquet"
        counts = {"rows": 0, "tokens": 0}
        columns = ["pair_id", "conversation", *self.embed.attributes]
        with (
            fsio.AtomicParquetWriter(fs, fsio.join(root, rel), schema) as out,
            in_fs.open_input_file(in_path) as f,
        ):
            for batch in pq.ParquetFile(f).iter_batches(self.embed.batch_rows, columns=columns):
                table = self._embed_batch(encoder, schema, batch)
                out.write(table)
                counts["rows"] += table.num_rows
                counts["tokens"] += int(table["tokens"].to_numpy().sum())
        return {
            "shard": index,
            "files": [{"path": rel, "kind": "data", "rows": out.rows, "bytes": out.size()}],
            "counts": counts,
        }

    def _embed_batch(self, encoder: Encoder, schema: pa.Schema, batch: pa.RecordBatch) -> pa.Table:
        attributes = {
            name: [a["value"] if a else None for a in batch.column(name).to_pylist()]
            for name in self.embed.attributes
        }
        texts = [
            render_text(
                conversation,
                {name: values[row] for name, values in attributes.items()},
                self.embed.max_chars,
            )
            for row, conversation in enumerate(batch.column("conversation").to_pylist())
        ]
        vectors, tokens = embed_texts(encoder, texts, self.embed.token_budget)
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        n = batch.num_rows
        columns = {
            "pair_id": batch.column("pair_id"),
            "vector": pa.FixedSizeListArray.from_arrays(flat, encoder.dim),
            "model": pa.array([self.embed.model] * n, pa.string()),
            "model_version": pa.array([self.model_version] * n, pa.string()),
            "tokens": pa.array(tokens, pa.int32()),
        }
        return pa.table(columns, schema=schema)


# -- running it ------------------------------------------------------------------------------


def embed_pairs(
    config: EmbedConfig, executor: ExecutorConfig | None = None, progress: bool = True
) -> str:
    """Embed every pair of ``config.pairs`` into ``config.out``; return the manifest URI.

    ``local``: in this process (or a local pool with ``workers > 1``). ``ray``: ``config.actors``
    actors of ``executor.cpus_per_shard`` CPUs, each loading the model once. Finished shards
    are skipped either way, and both write the same vectors at the same thread count.
    """
    executor = executor or ExecutorConfig()
    if executor.kind == "ray":
        stage = EmbedStage(config, torch_threads(executor.cpus_per_shard))
        return run_stage_on_actors(stage, executor, config.actors, progress=progress)
    cpus = (os.cpu_count() or 1) / executor.workers if executor.workers > 1 else None
    return run_stage(EmbedStage(config, torch_threads(cpus)), executor, progress)
