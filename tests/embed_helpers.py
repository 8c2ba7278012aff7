"""Small real inputs for embedding tests: the settings that keep MiniLM's passes to seconds, and
reading a stage's Parquet shards back."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from synpref_core.retrieval.embed import EmbedConfig

RECORDS = 200  # hh-rlhf harmless test records: ~260 KB, 4 ingest shards
MAX_CHARS = 600  # short texts keep the real model's forward passes to seconds


def read_vectors(directory: str | Path) -> pa.Table:
    return pq.read_table(sorted(Path(directory, "data").glob("*.parquet")))


def read_pairs(pairs_dir: str | Path) -> pa.Table:
    return pq.read_table(sorted(Path(pairs_dir, "data").glob("*.parquet")))


def embed_config(pairs: str, out: str, **update) -> EmbedConfig:
    return EmbedConfig(pairs=pairs, out=out, max_chars=MAX_CHARS, batch_rows=32, **update)
