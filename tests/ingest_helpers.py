"""Small real inputs for ingest tests: the bundled hh-rlhf split, uncompressed."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl

DATA = Path(__file__).resolve().parents[1] / "data"
HH = DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def write_hh_jsonl(directory: Path, copies: int = 1) -> Path:
    """hh-rlhf harmless test as plain JSON lines (repeated ``copies`` times: real duplicates)."""
    path = directory / "hh.jsonl"
    path.write_bytes(gzip.decompress(HH.read_bytes()) * copies)
    return path


def read_dir(path: Path, pattern: str) -> pl.DataFrame:
    """The files matching ``pattern``, in order: Parquet, or Arrow IPC (normalize's pairs)."""
    files = sorted(path.glob(pattern))
    if files and files[0].suffix == ".arrow":
        return pl.concat([pl.read_ipc(f) for f in files])
    return pl.read_parquet(files)
