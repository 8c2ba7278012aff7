"""Filesystem access for local paths and object-store URIs through pyarrow filesystems.

``s3://bucket/x``, ``gs://...`` and ``file:///...`` URIs work wherever a path does; a plain path is
local. Writes are atomic: write a temporary sibling, then move it over the target, so a reader
never sees half a file and a killed writer leaves only a ``.tmp-*`` file behind.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from synpref_core.schema import conform


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a URI or a local path (made absolute)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """Join a URI or path with relative parts (always '/')."""
    return posixpath.join(base, *parts)


def list_files(uri: str) -> list[str]:
    """Every file below a directory URI (recursive), as URIs, sorted."""
    fs, path = resolve(uri)
    scheme = uri.split("://", 1)[0] + "://" if "://" in uri else ""
    if scheme == "file://":
        scheme = "file://" if path.startswith("/") else "file:///"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(scheme + i.path for i in infos if i.type == pafs.FileType.File)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _tmp_sibling(path: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".tmp-{uuid.uuid4().hex[:8]}-{tail}")


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = _tmp_sibling(path)
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except BaseException:
        _discard(fs, tmp)
        raise


def _discard(fs: pafs.FileSystem, tmp: str) -> None:
    """Remove a temporary file that will not be moved into place (if it was created)."""
    if exists(fs, tmp):
        fs.delete_file(tmp)


def write_json_atomic(fs: pafs.FileSystem, path: str, obj: object) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes_atomic(fs, path, text.encode("utf-8"))


def read_json(fs: pafs.FileSystem, path: str) -> object:
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode("utf-8"))


# Columns holding long, mostly unique text (pair ids, messages, responses, raw input).
TEXT_COLUMNS = frozenset({"pair_id", "conversation", "chosen", "rejected", "raw", "reason", "meta"})


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    names = [f.name for f in schema if f.name not in TEXT_COLUMNS]
    if "conversation" in schema.names:
        names.append("conversation.list.element.role")
    return names


class AtomicParquetWriter:
    """Append record batches to one Parquet file that appears only on :meth:`close`.

    Used as a context manager; an exception inside the block, or a failure to move the file into
    place (the target is a directory, say), removes the temporary file.
    """

    def __init__(
        self, fs: pafs.FileSystem, path: str, schema: pa.Schema, compression: str = "zstd"
    ):
        fs.create_dir(posixpath.dirname(path), recursive=True)
        self.fs, self.path, self.schema = fs, path, schema
        self._tmp = _tmp_sibling(path)
        self._sink = fs.open_output_stream(self._tmp)
        # Dictionaries and min/max statistics only where they pay: not on long unique text,
        # where the encoder builds a dictionary per page only to fall back to plain.
        self._writer = pq.ParquetWriter(
            self._sink,
            schema,
            compression=compression,
            use_dictionary=_dictionary_columns(schema),
            write_statistics=[f.name for f in schema if f.name not in TEXT_COLUMNS],
        )
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        """Append ``table`` after checking it against the file's schema."""
        if table.num_rows:
            self._writer.write_table(conform(table, self.schema))
            self.rows += table.num_rows

    def __enter__(self) -> AtomicParquetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.close()
        self._sink.close()
        if exc_type is not None:
            _discard(self.fs, self._tmp)
            return
        try:
            self.fs.move(self._tmp, self.path)
        except BaseException:
            _discard(self.fs, self._tmp)
            raise

    def size(self) -> int:
        return self.fs.get_file_info(self.path).size
