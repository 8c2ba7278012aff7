"""Stages: units of work over shards that do not know where they run.

A stage plans a deterministic list of shard specs, then computes each shard independently into
``part-NNNNN`` files plus a completion marker ``_markers/part-NNNNN.json``. After all shards, the
manifest ``manifest.json`` is written **last**: its existence means the stage completed. A re-run
skips every shard whose marker carries the same config hash and whose files still exist, so
removing one finished shard recomputes only that shard, and the manifest comes out identical.

Executors (``synpref_core.executors``) own the loop; stages never import Ray.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypedDict

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from synpref_core.io import fs as fsio


class FileEntry(TypedDict):
    path: str  # relative to the stage directory
    kind: str  # "data" or "rejects"
    rows: int
    bytes: int


class ShardResult(TypedDict):
    shard: int
    files: list[FileEntry]
    counts: dict[str, int]


class StageError(RuntimeError):
    """A stage cannot run: bad input or inconsistent state, named in the message."""


MANIFEST = "manifest.json"


def part_name(index: int) -> str:
    return f"part-{index:05d}"


class Stage(ABC):
    """One step of a pipeline writing to ``self.out``. Subclasses set ``name`` and implement
    :meth:`plan` and :meth:`run_shard`; both must be deterministic for a given config."""

    name: ClassVar[str]

    def __init__(self, out: str, config: dict[str, Any], config_hash: str, parents: list[str]):
        self.out = out
        self.config = config
        self.config_hash = config_hash
        self.parents = [manifest_uri(p) for p in parents]

    @property
    def run_id(self) -> str:
        """Deterministic id of this stage's output, recorded on every row it writes."""
        return f"{self.name}-{self.config_hash}"

    @abstractmethod
    def plan(self) -> list[dict[str, Any]]:
        """JSON-serialisable spec of every shard, in order."""

    @abstractmethod
    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        """Compute one shard, write its files atomically, return what it wrote."""

    def schemas(self) -> dict[str, str]:
        """Schema fingerprints of the file kinds this stage writes."""
        return {}

    # -- markers and manifest ---------------------------------------------------------------

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return fsio.resolve(self.out)

    def marker_path(self, index: int) -> str:
        return fsio.join(self._fs()[1], "_markers", part_name(index) + ".json")

    def finished_result(self, index: int) -> ShardResult | None:
        """The shard's recorded result if it finished under this config and its files exist."""
        fs, root = self._fs()
        marker = self.marker_path(index)
        if not fsio.exists(fs, marker):
            return None
        record = fsio.read_json(fs, marker)
        if record.get("config_hash") != self.config_hash:
            return None
        result: ShardResult = record["result"]
        for entry in result["files"]:
            info = fs.get_file_info(fsio.join(root, entry["path"]))
            if info.type == pafs.FileType.NotFound or info.size != entry["bytes"]:
                return None
        return result

    def mark_finished(self, result: ShardResult) -> None:
        fs, _ = self._fs()
        record = {"config_hash": self.config_hash, "result": result}
        fsio.write_json_atomic(fs, self.marker_path(result["shard"]), record)

    def execute_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        """Run one shard and record its marker (what executors call)."""
        result = self.run_shard(index, spec)
        self.mark_finished(result)
        return result

    def manifest_path(self) -> str:
        return manifest_uri(self.out)

    def summarize(self, results: list[ShardResult]) -> dict[str, int]:
        """Stage-wide counts; by default the sum over shards."""
        totals: dict[str, int] = {}
        for result in results:
            for key, value in result["counts"].items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def write_manifest(self, specs: list[dict[str, Any]], results: list[ShardResult]) -> str:
        fs, root = self._fs()
        results = sorted(results, key=lambda r: r["shard"])
        files = [entry for r in results for entry in r["files"]]
        manifest = {
            "stage": self.name,
            "run_id": self.run_id,
            "config": self.config,
            "config_hash": self.config_hash,
            "schemas": self.schemas(),
            "parents": self.parents,
            "num_shards": len(specs),
            "shards": [{**r, "spec": specs[r["shard"]]} for r in results],
            "files": files,
            "rows": sum(f["rows"] for f in files if f["kind"] == "data"),
            "bytes": sum(f["bytes"] for f in files),
            "counts": self.summarize(results),
        }
        fsio.write_json_atomic(fs, fsio.join(root, MANIFEST), manifest)
        return self.manifest_path()


def manifest_uri(uri: str) -> str:
    """The manifest file of a stage, given its directory or the manifest file itself."""
    return uri if uri.endswith(".json") else fsio.join(uri, MANIFEST)


@dataclass(frozen=True)
class Manifest:
    """A finished stage's manifest: what it wrote, from what, and its counts.

    ``dir`` is the stage directory (file paths in ``files`` are relative to it) and ``parents``
    are always the manifest URIs of the stages it read. Two manifests compare equal when every
    recorded field does; ``dir`` names where it was read from and takes no part."""

    stage: str
    run_id: str
    config: dict[str, Any]
    config_hash: str
    schemas: dict[str, str]
    parents: tuple[str, ...]
    num_shards: int
    shards: tuple[dict[str, Any], ...]
    files: tuple[FileEntry, ...]
    rows: int
    bytes: int
    counts: dict[str, int]
    dir: str = field(default="", compare=False)

    @property
    def uri(self) -> str:
        return fsio.join(self.dir, MANIFEST)

    def entries(self, kind: str = "data") -> list[FileEntry]:
        """The recorded files of one kind (``data``, ``rejects``...), in shard order."""
        return [f for f in self.files if f["kind"] == kind]

    def paths(self, kind: str = "data") -> list[str]:
        """Absolute URIs of the files of one kind, in shard order."""
        return [fsio.join(self.dir, f["path"]) for f in self.entries(kind)]

    def to_json(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "dir"}
        return {
            **record,
            "parents": list(self.parents),
            "shards": list(self.shards),
            "files": list(self.files),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any], directory: str) -> Manifest:
        names = {f.name for f in fields(cls)} - {"dir"}
        missing = names - record.keys()
        if missing:
            raise StageError(
                f"{fsio.join(directory, MANIFEST)}: not a synpref manifest "
                f"(missing {', '.join(sorted(missing))})"
            )
        values = {name: record[name] for name in names}
        values["parents"] = tuple(values["parents"])
        values["shards"] = tuple(values["shards"])
        values["files"] = tuple(values["files"])
        return cls(**values, dir=directory)


def load_manifest(uri: str) -> Manifest:
    """Read a manifest given the stage directory or the manifest file itself."""
    uri = manifest_uri(uri)
    fs, path = fsio.resolve(uri)
    if not fsio.exists(fs, path):
        raise StageError(f"no manifest at {uri}: the stage has not completed there")
    try:
        record = fsio.read_json(fs, path)
    except ValueError as exc:
        raise StageError(f"{uri}: not a synpref manifest (not JSON: {exc})") from exc
    if not isinstance(record, dict):
        raise StageError(f"{uri}: not a synpref manifest (not a JSON object)")
    return Manifest.from_json(record, uri.rsplit("/", 1)[0])


def iter_batches(
    stage_dir: str, kind: str = "data", columns: list[str] | None = None, batch_rows: int = 10_000
) -> Iterator[pa.RecordBatch]:
    """Stream the record batches of a finished stage's files: memory stays at one batch.

    The manifest is read at once, so a missing or unfinished stage fails here, not mid-stream.
    """
    return _stream(load_manifest(stage_dir).paths(kind), columns, batch_rows)


def _stream(uris: list[str], columns: list[str] | None, batch_rows: int):
    for uri in uris:
        fs, path = fsio.resolve(uri)
        with fs.open_input_file(path) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns)
