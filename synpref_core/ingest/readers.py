"""Reading input files as streams of raw records, in shards.

Supported containers: JSON lines (``.jsonl``, ``.ndjson``, optionally ``.gz``), one JSON document
(``.json``) and Parquet (``.parquet``). Large uncompressed JSON-lines files are split into byte
ranges that start on line boundaries, so one big file still spreads over many workers. Planning
only seeks: each range's lines are counted by the worker that reads it, so line numbers within a
range count from the range's start, and whoever has every range's count (the dedup stage) adds
the lines of the ranges before it to get each record's true line.

A malformed file (a line that is not JSON, a document of the wrong top-level type) raises
:class:`MalformedInputError` naming the file and line: that is a broken file, not a bad row.
A line that is not valid UTF-8 is a bad row: it comes back as a :class:`RowError`.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from synpref_core.io import fs as fsio

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
INPUT_SUFFIXES = (*JSONL_SUFFIXES, ".json", ".parquet")
_SCAN_CHUNK = 8 * 2**20
HASHED_BYTES = 16 * 2**20  # inputs up to this size are fingerprinted by content too (~20 ms)


class MalformedInputError(ValueError):
    """An input file cannot be read as its format; the message names the file and line."""


class RowError(Exception):
    """One input record cannot become a pair; ``code`` is a schema.REJECT_CODES entry."""

    def __init__(self, code: str, reason: str, raw: str | None = None):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.raw = raw  # the input as text, when the record could not be parsed


def expand_paths(paths: list[str]) -> list[str]:
    """Files named by ``paths`` (files, globs, directories searched recursively), sorted."""
    found: list[str] = []
    for path in paths:
        if "://" in path:
            fs, inner = fsio.resolve(path)
            kind = fs.get_file_info(inner).type
            if kind == pafs.FileType.NotFound:
                raise MalformedInputError(f"{path}: no such file")
            if kind == pafs.FileType.Directory:
                found += [f for f in fsio.list_files(path) if f.endswith(INPUT_SUFFIXES)]
            else:
                found.append(path)
        elif os.path.isdir(path):
            for root, _dirs, files in os.walk(path):
                found += [os.path.join(root, f) for f in files if f.endswith(INPUT_SUFFIXES)]
        elif any(ch in path for ch in "*?["):
            found += glob.glob(path, recursive=True)
        elif os.path.exists(path):
            found.append(path)
        else:
            raise MalformedInputError(f"{path}: no such file")
    unsupported = [p for p in found if not p.endswith(INPUT_SUFFIXES)]
    if unsupported:
        raise MalformedInputError(
            f"{unsupported[0]}: unsupported file type (expected one of {', '.join(INPUT_SUFFIXES)})"
        )
    if not found:
        raise MalformedInputError(f"no input files match {paths}")
    return sorted(dict.fromkeys(found))


def file_fingerprint(path: str) -> dict[str, Any]:
    """What names a file's content: its size and a hash of its bytes for a file up to
    :data:`HASHED_BYTES` (an edit within the same size and clock tick changes it; a copy of the
    same bytes does not), its size and modification time above. Part of every ingest shard's spec
    and of the ingest identity, so a re-run never serves rows read from an older version."""
    fs, inner = fsio.resolve(path)
    info = fs.get_file_info(inner)
    if info.size is None or info.size > HASHED_BYTES:
        return {"size": info.size, "mtime_ns": info.mtime_ns}
    with fs.open_input_stream(inner, compression=None) as f:  # the bytes as stored
        return {"size": info.size, "blake2b": hashlib.blake2b(f.read(), digest_size=16).hexdigest()}


def plan_file(path: str, shard_bytes: int) -> list[dict[str, Any]]:
    """Shard specs for one file: byte ranges for plain JSON lines, the whole file otherwise;
    each names the file's :func:`file_fingerprint`."""
    fs, inner = fsio.resolve(path)
    version = file_fingerprint(path)
    size = version["size"]
    if not is_byte_range(path) or size <= shard_bytes:
        return [{"path": path, "start": 0, "end": size, "input": version}]
    specs = []
    with fs.open_input_file(inner) as f:
        start = 0
        while start < size:
            end = _next_line_start(f, min(start + shard_bytes, size), size)
            specs.append({"path": path, "start": start, "end": end, "input": version})
            start = end
    return specs


def is_byte_range(path: str) -> bool:
    """Whether shards of this file are byte ranges of it (plain JSON lines)."""
    return path.endswith((".jsonl", ".ndjson"))


def _next_line_start(f, pos: int, size: int) -> int:
    """The first offset at or after ``pos`` that begins a line (or ``size``)."""
    if pos >= size:
        return size
    f.seek(pos - 1)
    while True:
        chunk = f.read(65536)
        if not chunk:
            return size
        newline = chunk.find(b"\n")
        if newline >= 0:
            return f.tell() - len(chunk) + newline + 1


def read_range(spec: dict[str, Any]) -> bytes:
    """The bytes of a byte-range shard."""
    fs, inner = fsio.resolve(spec["path"])
    with fs.open_input_file(inner) as f:
        f.seek(spec["start"])
        return f.read(spec["end"] - spec["start"])


def newline_offsets(data: bytes) -> np.ndarray:
    """Offsets of every newline in ``data`` (vectorised: ~10x a Python count of 32 MiB)."""
    return np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))


def _lines_before(path: str, offset: int) -> int:
    """Newlines in the file before ``offset``; only to name a broken line in an error."""
    fs, inner = fsio.resolve(path)
    count = 0
    with fs.open_input_file(inner) as f:
        while f.tell() < offset:
            count += f.read(min(_SCAN_CHUNK, offset - f.tell())).count(b"\n")
    return count


def iter_jsonl(spec: dict[str, Any], data: bytes | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object or RowError) for the lines of a JSON-lines shard; a byte
    range's lines count from 1 at its start. ``data``: the range, if already read."""
    path = spec["path"]
    if path.endswith(".gz"):
        fs, inner = fsio.resolve(path)
        try:
            with fs.open_input_file(inner) as raw, gzip.GzipFile(fileobj=raw) as f:
                yield from _parse_lines(path, f, 0)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            reason = "it is truncated" if isinstance(exc, EOFError) else str(exc)
            raise MalformedInputError(f"{path}: not a readable gzip file: {reason}") from None
    else:
        data = read_range(spec) if data is None else data
        yield from _parse_lines(path, data.split(b"\n"), spec["start"])


def _parse_lines(path: str, lines, start: int) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, orjson.loads(line)
            continue
        except orjson.JSONDecodeError:
            pass  # orjson is strict about UTF-8 and surrogates; tell the two cases apart below
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield (
                number,
                RowError(
                    "undecodable_text",
                    f"line is not valid UTF-8: {exc}",
                    raw=line.decode("utf-8", errors="backslashreplace"),
                ),
            )
            continue
        try:
            yield number, json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            line = number + (_lines_before(path, start) if start else 0)
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            # Lines count from 1, as editors do; rows' source_row is the line less one.
            raise MalformedInputError(
                f"{path}:{line}: invalid JSON: {reason} (source_row {line - 1})"
            ) from None


def read_document(path: str) -> Any:
    """Parse a whole ``.json`` file. Errors name the file and line."""
    fs, inner = fsio.resolve(path)
    with fs.open_input_stream(inner) as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MalformedInputError(f"{path}:{line}: not valid UTF-8") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedInputError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc


def iter_parquet(path: str, batch_rows: int) -> Iterator[tuple[int, Any]]:
    fs, inner = fsio.resolve(path)
    with fs.open_input_file(inner) as f:
        row = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
            for record in batch.to_pylist():
                yield row, record
                row += 1
