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

    executors.run(EmbedStage(EmbedConfig(pairs="OUT/ingest", out="OUT/embeddings")))

At scale, ``ExecutorConfig(kind="ray", ...)`` with ``EmbedConfig(actors=N, num_gpus=G)`` starts
N Ray actors of ``cpus_per_shard`` CPUs and G GPUs that load the model once and take shards until
none is left; ``executors.run(..., on_actors=False)`` runs plain Ray tasks instead (one task per
shard, the model cached per worker process). Torch threads per process follow
``$SYNPREF_TORCH_THREADS`` or the CPUs given, as in scoring.
"""

from __future__ import annotations

import logging
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from synpref_core.config import DEFAULT_HOME, ActorConfig
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
from synpref_core.rm.scoring import CPU_TOKEN_BUDGET
from synpref_core.schema import fingerprint
from synpref_core.stages import MapStage, part_name

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


class EmbedConfig(ActorConfig):
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
        CPU_TOKEN_BUDGET, ge=64, description="Most tokens (padding included) per batch."
    )
    pairs: str = Field(description="Input: a finished pair stage (its directory or manifest).")
    out: str = Field(str(DEFAULT_HOME / "embeddings"), description="Output directory or URI.")
    batch_rows: int = Field(4096, ge=1, description="Pairs read, sorted and embedded at a time.")


class EmbedStage(MapStage):
    """One output shard per data file of the input pair manifest, in the same order."""

    name = "embed"
    holds_model = True

    def __init__(self, config: EmbedConfig):
        super().__init__(config, parent=config.pairs)
        self.columns = ["pair_id", "conversation", *config.attributes]

    def fingerprint_model(self) -> str:
        embed = self.settings
        return model_version(embed.model, embed.attributes, embed.max_chars)

    def load_model(self) -> Encoder:
        return load_encoder(self.settings.model)

    def schema_for(self, model: Encoder) -> pa.Schema:
        return embed_schema(model.dim)

    def schemas(self) -> dict[str, str]:
        # The width of the vectors is the model's: read it from what the shards wrote.
        fs, root = self._fs()
        first = fsio.join(root, "data", part_name(0) + ".parquet")
        if not fsio.exists(fs, first):
            return {}
        with fs.open_input_file(first) as f:
            return {"data": fingerprint(pq.read_schema(f))}

    def map_batch(self, batch: pa.RecordBatch, model: Encoder) -> pa.Table:
        embed = self.settings
        attributes = {
            name: [a["value"] if a else None for a in batch.column(name).to_pylist()]
            for name in embed.attributes
        }
        texts = [
            render_text(
                conversation,
                {name: values[row] for name, values in attributes.items()},
                embed.max_chars,
            )
            for row, conversation in enumerate(batch.column("conversation").to_pylist())
        ]
        vectors, tokens = embed_texts(model, texts, embed.token_budget)
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        n = batch.num_rows
        columns = {
            "pair_id": batch.column("pair_id"),
            "vector": pa.FixedSizeListArray.from_arrays(flat, model.dim),
            "model": pa.array([embed.model] * n, pa.string()),
            "model_version": pa.array([self.model_version] * n, pa.string()),
            "tokens": pa.array(tokens, pa.int32()),
        }
        return pa.table(columns, schema=self.schema_for(model))

    def batch_counts(self, batch: pa.RecordBatch, out: pa.Table) -> dict[str, int]:
        return {"tokens": pc.sum(out["tokens"]).as_py() or 0}
