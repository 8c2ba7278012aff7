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
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypedDict

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel

from synpref_core.config import config_hash
from synpref_core.io import fs as fsio
from synpref_core.schema import fingerprint


class FileEntry(TypedDict):
    path: str  # relative to the stage directory
    kind: str  # "data", "rejects" (ingest) or "errors" (per-record failures of a map stage)
    rows: int
    bytes: int


class ShardResult(TypedDict):
    shard: int
    files: list[FileEntry]
    counts: dict[str, int]


class StageError(RuntimeError):
    """A stage cannot run: bad input or inconsistent state, named in the message."""


MANIFEST = "manifest.json"
OWNED_FOLDERS = (
    "data",
    "rejects",
    "errors",
    "_markers",
)  # what a stage's directory holds of its own


def part_name(index: int) -> str:
    return f"part-{index:05d}"


class Stage(ABC):
    """One step of a pipeline writing to ``self.out``. Subclasses set ``name`` and implement
    :meth:`plan` and :meth:`run_shard`; both must be deterministic for a given config."""

    name: ClassVar[str]
    holds_model: ClassVar[bool] = False  # True: executors run it on actors that load a model

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

    def finished_result(self, index: int, spec: dict[str, Any]) -> ShardResult | None:
        """The shard's recorded result if it finished under this identity and this very spec
        (which names its input: a file's size and mtime, a parent file's path and rows), and
        its files still exist at the recorded sizes."""
        fs, root = self._fs()
        marker = self.marker_path(index)
        if not fsio.exists(fs, marker):
            return None
        try:
            record = fsio.read_json(fs, marker)
        except ValueError:
            return None  # a torn or foreign marker: recompute the shard
        if record.get("config_hash") != self.config_hash or record.get("spec") != spec:
            return None
        result: ShardResult = record["result"]
        for entry in result["files"]:
            info = fs.get_file_info(fsio.join(root, entry["path"]))
            if info.type == pafs.FileType.NotFound or info.size != entry["bytes"]:
                return None
        return result

    def mark_finished(self, result: ShardResult, spec: dict[str, Any]) -> None:
        fs, _ = self._fs()
        record = {"config_hash": self.config_hash, "spec": spec, "result": result}
        fsio.write_json_atomic(fs, self.marker_path(result["shard"]), record)

    def execute_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        """Run one shard and record its marker (what executors call)."""
        result = self.run_shard(index, spec)
        self.mark_finished(result, spec)
        return result

    def manifest_path(self) -> str:
        return manifest_uri(self.out)

    def remove_stale(self) -> list[str]:
        """Delete what the finished manifest does not list in the folders this stage owns
        (``data/``, ``rejects/``, ``errors/``, ``_markers/``), and temporary files a killed run left
        (``.tmp-*``), so a folder reused for another input holds only this run's files.
        Returns the removed paths, relative to the stage directory."""
        fs, root = self._fs()
        manifest = load_manifest(self.out)
        keep = {f["path"] for f in manifest.files}
        keep |= {f"_markers/{part_name(i)}.json" for i in range(manifest.num_shards)}
        found = fs.get_file_info(pafs.FileSelector(root, recursive=False))
        found = [i for i in found if i.type == pafs.FileType.File]
        for folder in OWNED_FOLDERS:
            owned = pafs.FileSelector(fsio.join(root, folder), allow_not_found=True, recursive=True)
            found += [i for i in fs.get_file_info(owned) if i.type == pafs.FileType.File]
        stale = []
        for info in found:
            rel = info.path[len(root) :].lstrip("/")
            if info.base_name.startswith(".tmp-") or ("/" in rel and rel not in keep):
                fs.delete_file(info.path)
                stale.append(rel)
        return sorted(stale)

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

    @property
    def is_pairs(self) -> bool:
        """Its data rows are pair rows (``PAIR_SCHEMA``)."""
        from synpref_core.schema import PAIR_SCHEMA

        return self.schemas.get("data") == fingerprint(PAIR_SCHEMA)

    def require_pairs(self, what: str = "") -> Manifest:
        """Itself, or a one-line :class:`StageError` naming the stage and what needs pairs."""
        if not self.is_pairs:
            need = f"; {what} reads pair rows" if what else ""
            raise StageError(f"{self.uri}: not a pairs stage ({self.stage!r} rows){need}")
        return self

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


def read_stage(stage_dir: str, columns: list[str] | None = None, kind: str = "data") -> pa.Table:
    """A finished stage's files of one kind as one table (for outputs that fit in memory:
    judgements, calibration, small selections); an empty stage gives an empty table."""
    manifest = load_manifest(stage_dir)
    tables = []
    for uri in manifest.paths(kind):
        fs, path = fsio.resolve(uri)
        with fs.open_input_file(path) as f:
            tables.append(pq.read_table(f, columns=columns))
    if not tables:
        raise StageError(f"{manifest.uri}: no {kind} files to read")
    return pa.concat_tables(tables)


def _stream(uris: list[str], columns: list[str] | None, batch_rows: int):
    for uri in uris:
        fs, path = fsio.resolve(uri)
        with fs.open_input_file(path) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns)


# -- the one identity rule and the map stage -------------------------------------------------


def stage_identity(
    name: str,
    config: BaseModel,
    runtime_fields: AbstractSet[str] = frozenset(),
    parents: Sequence[Manifest] = (),
    model: str = "",
) -> str:
    """The config hash of every derived stage: what its output depends on, and nothing else.

    That is the stage's name, its config less the fields that only say how or where it runs
    (``runtime_fields``: ``out``, ``actors``...), the run ids of the stages it reads (new input,
    new output) and the fingerprint of the model it holds, if any (new weights at the same path,
    new output)."""
    return config_hash(
        {
            "stage": name,
            "config": config.model_dump(mode="json", exclude=set(runtime_fields)),
            "parents": [parent.run_id for parent in parents],
            "model": model,
        }
    )


class MapStage(Stage):
    """One output file per data file of a finished parent stage, in the same order, computed
    ``batch_rows`` rows at a time: the shape of scoring, embedding, selection, and of the
    attribute, judging and consistency stages built on them.

    A subclass sets ``name`` and ``columns`` (the parent columns it reads; None: all),
    implements :meth:`map_batch` (input rows → output rows) and gives the output schema
    (``output_schema``, or :meth:`schema_for` when it depends on the model). A stage that holds
    a model also sets ``holds_model = True`` and implements :meth:`load_model` (once per
    process: use :func:`synpref_core.models.cached_model`) and :meth:`fingerprint_model` (part
    of the identity, kept as ``model_version``); executors then run it on Ray actors that each
    load the model once, with ``threads`` torch threads. Its config needs ``out``; ``batch_rows``,
    ``actors`` and ``num_gpus`` are read when present. For example, a stage that keeps the pairs
    an RM already ranks right::

        class AgreeConfig(StrictModel):
            scores: str = Field(description="A finished score stage.")
            margin: float = 0.0
            out: str
            batch_rows: int = 10_000

        class AgreeStage(MapStage):
            name = "agree"
            columns = ["pair_id", "p"]
            output_schema = pa.schema([("pair_id", pa.string()), ("p", pa.float64())])

            def __init__(self, config: AgreeConfig):
                super().__init__(config, parent=config.scores)

            def map_batch(self, batch: pa.RecordBatch, model: None) -> pa.Table:
                table = pa.Table.from_batches([batch])
                return table.filter(pc.greater(table["p"], 0.5 + self.settings.margin))

            def batch_counts(self, batch: pa.RecordBatch, out: pa.Table) -> dict[str, int]:
                return {"disagree": batch.num_rows - out.num_rows}

        manifest = executors.run(AgreeStage(AgreeConfig(scores=..., out=...)), executor)

    A stage whose rows can fail one by one (an LLM answer that never parses) also sets
    ``error_schema``; its :meth:`map_batch` then returns ``(rows, errors)`` and the errors are
    written beside the data as ``errors/part-NNNNN.parquet`` (kind ``errors``), so every input
    row is accounted for. :meth:`identity` is what the output depends on; override it when the
    config holds more than ``runtime_fields`` that do not (an endpoint's URL, say).

    Markers, re-runs that skip finished shards, the manifest and the identity (the config less
    ``runtime_fields``, the parent's run id, the model's fingerprint) come from here.
    """

    columns: ClassVar[list[str] | None] = None
    output_schema: ClassVar[pa.Schema | None] = None
    error_schema: ClassVar[pa.Schema | None] = None
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"out", "actors", "num_gpus"})

    def __init__(self, config: BaseModel, parent: str):
        self.parent = load_manifest(parent)  # fails here, naming the path, if unfinished
        self.settings = config
        self.threads: int | None = None  # set by the executor: how it runs, never what
        self.model_version = self.fingerprint_model() if self.holds_model else ""
        super().__init__(
            config.out, config.model_dump(mode="json"), self.identity(), [self.parent.uri]
        )

    def identity(self) -> str:
        """The config hash (:func:`stage_identity` of the config less ``runtime_fields``)."""
        return stage_identity(
            self.name, self.settings, self.runtime_fields, [self.parent], self.model_version
        )

    # -- what a subclass gives ----------------------------------------------------------------

    @abstractmethod
    def map_batch(self, batch: pa.RecordBatch, model: Any) -> pa.Table | tuple[pa.Table, pa.Table]:
        """The output rows of one batch of input rows (and its error rows, with
        ``error_schema``)."""

    def map_batches(
        self, batches: Iterator[pa.RecordBatch], model: Any
    ) -> Iterator[tuple[pa.RecordBatch, Any]]:
        """Each input batch with :meth:`map_batch`'s result, in order. A stage that works
        ahead (scoring prepares the next batch while the GPU runs the current one) overrides
        this instead."""
        for batch in batches:
            yield batch, self.map_batch(batch, model)

    def batch_counts(self, batch: pa.RecordBatch, out: pa.Table) -> dict[str, int]:
        """Counts of one batch beyond ``rows`` (summed per shard and over the stage)."""
        return {}

    def schema_for(self, model: Any) -> pa.Schema:
        if self.output_schema is None:
            raise NotImplementedError(f"{self.name}: set output_schema or override schema_for")
        return self.output_schema

    def fingerprint_model(self) -> str:
        """The fingerprint of the model the stage holds (stages with ``holds_model``)."""
        raise NotImplementedError(f"{self.name}: a stage holding a model must fingerprint it")

    def load_model(self) -> Any:
        """The model, loaded at most once per process; None for stages without one."""
        return None

    # -- what the base does -------------------------------------------------------------------

    @property
    def actors(self) -> int:
        return getattr(self.settings, "actors", 1)

    @property
    def num_gpus(self) -> float:
        return getattr(self.settings, "num_gpus", 0)

    def schemas(self) -> dict[str, str]:
        kinds = {"data": self.output_schema, "errors": self.error_schema}
        return {kind: fingerprint(schema) for kind, schema in kinds.items() if schema is not None}

    def plan(self) -> list[dict[str, Any]]:
        return [{"input": f["path"], "rows": f["rows"]} for f in self.parent.entries("data")]

    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        from synpref_core.models import using_torch_threads

        threads = using_torch_threads(self.threads) if self.holds_model else nullcontext()
        with threads:
            return self._map_file(index, spec)

    def _map_file(self, index: int, spec: dict[str, Any]) -> ShardResult:
        model = self.load_model()
        in_fs, in_path = fsio.resolve(fsio.join(self.parent.dir, spec["input"]))
        fs, root = fsio.resolve(self.out)
        kinds = {"data": self.schema_for(model), "errors": self.error_schema}
        rels = {k: f"{k}/{part_name(index)}.parquet" for k, s in kinds.items() if s is not None}
        counts: dict[str, int] = {"rows": 0}
        batch_rows = getattr(self.settings, "batch_rows", 10_000)
        with ExitStack() as stack:
            writers = {
                kind: stack.enter_context(
                    fsio.AtomicParquetWriter(fs, fsio.join(root, rel), kinds[kind])
                )
                for kind, rel in rels.items()
            }
            f = stack.enter_context(in_fs.open_input_file(in_path))
            batches = pq.ParquetFile(f).iter_batches(batch_rows, columns=self.columns)
            for batch, mapped in self.map_batches(batches, model):
                table, errors = mapped if self.error_schema is not None else (mapped, None)
                writers["data"].write(table)
                if errors is not None:
                    writers["errors"].write(errors)
                    counts["errors"] = counts.get("errors", 0) + errors.num_rows
                for key, value in {
                    "rows": table.num_rows,
                    **self.batch_counts(batch, table),
                }.items():
                    counts[key] = counts.get(key, 0) + value
        files: list[FileEntry] = [
            {"path": rels[kind], "kind": kind, "rows": w.rows, "bytes": w.size()}
            for kind, w in writers.items()
        ]
        return {"shard": index, "files": files, "counts": counts}
