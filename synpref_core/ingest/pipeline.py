"""The ingest pipeline: read sources, normalise, validate, decontaminate, deduplicate.

Two stages, each with shards, markers and a manifest (see ``synpref_core.stages``)::

    OUT/_stages/normalize/   data/ rejects/ _markers/ manifest.json   (stage "normalize")
    OUT/                     data/ rejects/ _markers/ manifest.json   (stage "dedup")

``normalize`` turns every input record into pair rows or quarantined rows (with a reason), and
drops pairs overlapping benchmark prompts. ``dedup`` removes exact duplicates on (conversation,
chosen, rejected) across all shards, keeping the first in input order, and writes the final pair
files (the only Parquet encode of a kept row: normalize writes its pairs uncompressed, dedup
writes them zstd-compressed). Rows of a byte-range shard are numbered from its start by the
worker that counts its lines; dedup adds the lines of the ranges before it, so the final
``source_row`` is the record's true line. The final manifest's counts obey
``input_rows = rows + quarantined + contaminated + duplicates``; a shard that breaks this raises.

Run locally: ``synpref ingest --format hh-rlhf data/hh-rlhf/... --out OUT``; at scale, the
``ingest`` Prefect flow runs the same stages as Ray tasks on a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson

# pyarrow imports pandas the first time it builds an array. Importing it here puts it in the
# forkserver that pools preload this module from, so each worker does not pay ~0.2 s CPU again.
import pandas  # noqa: F401
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synpref_core import schema
from synpref_core.config import ExecutorConfig, IngestConfig, SourceSpec, config_hash
from synpref_core.curation.decontam import benchmark_ngrams, contaminated_rows, conversation_texts
from synpref_core.curation.validate import validate_draft
from synpref_core.executors import run_stage
from synpref_core.ingest import columnar, rows
from synpref_core.ingest.formats import ADAPTERS, document_records
from synpref_core.ingest.readers import (
    MalformedInputError,
    RowError,
    expand_paths,
    is_byte_range,
    iter_jsonl,
    iter_parquet,
    newline_offsets,
    plan_file,
    read_document,
    read_range,
)
from synpref_core.io import fs as fsio
from synpref_core.stages import ShardResult, Stage, StageError, load_manifest, part_name

Record = tuple[int, Any, dict[str, Any]]
NORMALIZE_DIR = "_stages/normalize"  # the normalize stage's directory inside the output
# The normalize stage's pair files are read once, by dedup, which rewrites them compressed:
# compressing them too costs more CPU than the extra bytes cost I/O.
INTERMEDIATE_COMPRESSION = "none"


def ingest_identity(config: IngestConfig) -> str:
    """Hash of what the output depends on: the config without its output location."""
    return config_hash(config.model_copy(update={"out": ""}))


def iter_records(
    source: SourceSpec, spec: dict[str, Any], batch_rows: int, data: bytes | None = None
) -> Iterator[Record]:
    """(row, raw record or RowError, extras) for one shard of one source file; ``data``: the
    bytes of a byte-range shard, if already read."""
    path = spec["path"]
    if path.endswith(".parquet"):
        for row, raw in iter_parquet(path, batch_rows):
            yield row, raw, {}
    elif path.endswith(".json"):
        doc = read_document(path)
        try:
            records = document_records(source.format, doc, path)
        except ValueError as exc:
            raise MalformedInputError(f"{path}:1: {exc}") from exc
        for row, (raw, extra) in enumerate(records):
            yield row, raw, extra
    else:
        for line, raw in iter_jsonl(spec, data):
            yield line - 1, raw, {}


class NormalizeStage(Stage):
    """Normalise + validate + decontaminate each input shard into pair rows and rejects."""

    name = "normalize"

    def __init__(self, config: IngestConfig):
        super().__init__(
            out=fsio.join(config.out, NORMALIZE_DIR),
            config=config.model_dump(mode="json"),
            config_hash=ingest_identity(config),
            parents=[],
        )
        self.ingest = config
        self._benchmark: np.ndarray | None = None

    def schemas(self) -> dict[str, str]:
        return {
            "data": schema.fingerprint(schema.PAIR_SCHEMA),
            "rejects": schema.fingerprint(schema.REJECT_SCHEMA),
        }

    def plan(self) -> list[dict[str, Any]]:
        specs = []
        for index, source in enumerate(self.ingest.sources):
            for path in expand_paths(source.paths):
                for spec in plan_file(path, self.ingest.shard_bytes):
                    specs.append({"source": index, **spec})
        self.benchmark_ngrams()  # read once here: executors ship the stage with them to workers
        return specs

    def benchmark_ngrams(self) -> np.ndarray:
        """Sorted n-gram hashes of the benchmark prompts, read on first use in this process (a
        stage unpickled on a worker before plan() ran, or run without it, reads them itself)."""
        if self._benchmark is None:
            decontam = self.ingest.decontamination
            texts: set[str] = set()
            for bench in decontam.benchmarks:
                for path in expand_paths(bench.paths):
                    for spec in plan_file(path, self.ingest.shard_bytes):
                        for _, raw, _ in iter_records(bench, spec, self.ingest.batch_rows):
                            texts.update(_prompt_texts(bench, raw))
            self._benchmark = benchmark_ngrams(sorted(texts), decontam.ngram)
        return self._benchmark

    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        source = self.ingest.sources[spec["source"]]
        fs, root = fsio.resolve(self.out)
        data_rel = f"data/{part_name(index)}.parquet"
        rejects_rel = f"rejects/{part_name(index)}.parquet"
        counts = {
            "input_records": 0,
            "input_rows": 0,
            "rows": 0,
            "quarantined": 0,
            "contaminated": 0,
        }
        batches, lines = self._batches(source, spec)
        with (
            fsio.AtomicParquetWriter(
                fs, fsio.join(root, data_rel), schema.PAIR_SCHEMA, INTERMEDIATE_COMPRESSION
            ) as data,
            fsio.AtomicParquetWriter(
                fs, fsio.join(root, rejects_rel), schema.REJECT_SCHEMA
            ) as rejects,
        ):
            for table, bad, records in batches:
                counts["input_records"] += records
                self._flush(source, table, bad, data, rejects, counts)
        result: ShardResult = {
            "shard": index,
            "files": [
                {"path": data_rel, "kind": "data", "rows": data.rows, "bytes": data.size()},
                {
                    "path": rejects_rel,
                    "kind": "rejects",
                    "rows": rejects.rows,
                    "bytes": rejects.size(),
                },
            ],
            "counts": counts,
        }
        if lines is not None:
            result["lines"] = lines  # type: ignore[typeddict-unknown-key]
        return result

    def _batches(
        self, source: SourceSpec, spec: dict[str, Any]
    ) -> tuple[Iterator[rows.Batch], int | None]:
        """The shard's batches, and for a byte range the newlines in it (its count of lines).

        The columnar path handles plain-string ``pairs`` JSON lines; it declines (None) anything
        else, which the row path handles."""
        if not is_byte_range(spec["path"]):
            return self._row_batches(source, spec, None), None
        data = read_range(spec)
        newlines = newline_offsets(data)
        fast = columnar.pairs_batches(
            data,
            newlines,
            spec["path"],
            source,
            self.run_id,
            self.ingest.validation.max_field_chars,
            self.ingest.batch_rows,
        )
        return fast or self._row_batches(source, spec, data), len(newlines)

    def _row_batches(
        self, source: SourceSpec, spec: dict[str, Any], data: bytes | None
    ) -> Iterator[rows.Batch]:
        """(pairs table, rejects, records read) per ``batch_rows`` rows, record by record."""
        pairs: list[dict] = []
        bad: list[dict] = []
        records = 0
        for row, raw, extra in iter_records(source, spec, self.ingest.batch_rows, data):
            records += 1
            self._convert(source, spec["path"], row, raw, extra, pairs, bad)
            if len(pairs) + len(bad) >= self.ingest.batch_rows:
                yield pa.Table.from_pylist(pairs, schema=schema.PAIR_SCHEMA), bad, records
                pairs, bad, records = [], [], 0
        yield pa.Table.from_pylist(pairs, schema=schema.PAIR_SCHEMA), bad, records

    def _convert(
        self,
        source: SourceSpec,
        path: str,
        row: int,
        raw: Any,
        extra: dict[str, Any],
        pairs: list[dict],
        bad: list[dict],
    ) -> None:
        try:
            if isinstance(raw, RowError):
                raise raw
            drafts = ADAPTERS[source.format](raw, source)
            if not drafts:
                raise RowError("missing_field", "record holds no pair")
        except RowError as err:
            bad.append(
                rows.reject_row(self.run_id, source.source_name, path, row, err, rows.raw_text(raw))
            )
            return
        for draft in drafts:
            try:
                validate_draft(draft, self.ingest.validation.max_field_chars)
            except RowError as err:
                bad.append(
                    rows.reject_row(
                        self.run_id, source.source_name, path, row, err, rows.raw_text(raw)
                    )
                )
                continue
            pairs.append(rows.pair_row(self.run_id, source, path, row, {**extra, **draft}))

    def _flush(
        self,
        source: SourceSpec,
        table: pa.Table,
        bad: list[dict],
        data: fsio.AtomicParquetWriter,
        rejects: fsio.AtomicParquetWriter,
        counts: dict[str, int],
    ) -> None:
        """Decontaminate a batch of pairs, count every outcome, write pairs and rejects."""
        ngram = self.ingest.decontamination.ngram
        grams = self.benchmark_ngrams() if source.decontaminate else None
        if grams is not None and grams.size and table.num_rows:
            hit = contaminated_rows(conversation_texts(table.column("conversation")), grams, ngram)
            if hit.size:
                error = RowError("contaminated", f"shares a {ngram}-gram with a benchmark prompt")
                cols = ["conversation", "chosen", "rejected", "source_file", "source_row"]
                for p in table.select([*cols, "pair_id"]).take(pa.array(hit)).to_pylist():
                    raw = orjson.dumps({k: p[k] for k in cols[:3]}).decode()
                    bad.append(
                        rows.reject_row(
                            self.run_id,
                            source.source_name,
                            p["source_file"],
                            p["source_row"],
                            error,
                            raw,
                            p["pair_id"],
                        )
                    )
                mask = np.ones(table.num_rows, dtype=bool)
                mask[hit] = False
                table = table.filter(pa.array(mask))
        for reject in bad:
            code = reject["reason_code"]
            if code == "contaminated":
                counts["contaminated"] += 1
            else:
                counts["quarantined"] += 1
                counts[f"quarantined.{code}"] = counts.get(f"quarantined.{code}", 0) + 1
        counts["rows"] += table.num_rows
        counts["input_rows"] += table.num_rows + len(bad)
        data.write(table)
        rejects.write(pa.Table.from_pylist(bad, schema=schema.REJECT_SCHEMA))


def _prompt_texts(bench: SourceSpec, raw: Any) -> list[str]:
    """The conversations of a benchmark record as text; none for a broken record (it has no
    prompt to protect)."""
    if isinstance(raw, RowError):
        return []
    try:
        drafts = ADAPTERS[bench.format](raw, bench)
    except RowError:
        return []
    return ["\n".join(m["content"] for m in d["conversation"]) for d in drafts]


class DedupStage(Stage):
    """Exact dedup on the content id across every shard of the normalize stage, first one wins;
    writes the final pair files, with every row at its true line."""

    name = "dedup"

    def __init__(self, config: IngestConfig, parent_manifest: str):
        super().__init__(
            out=config.out,
            config=config.model_dump(mode="json"),
            config_hash=ingest_identity(config),
            parents=[parent_manifest],
        )
        self.batch_rows = config.batch_rows

    def schemas(self) -> dict[str, str]:
        return {
            "data": schema.fingerprint(schema.PAIR_SCHEMA),
            "rejects": schema.fingerprint(schema.REJECT_SCHEMA),
        }

    def plan(self) -> list[dict[str, Any]]:
        parent = load_manifest(self.parents[0])
        offsets = _row_offsets(parent.shards)
        frames = []
        for shard, offset in zip(parent.shards, offsets, strict=True):
            entry = next(f for f in shard["files"] if f["kind"] == "data")
            fs, inner = fsio.resolve(fsio.join(parent.dir, entry["path"]))
            with fs.open_input_file(inner) as f:
                ids = pq.read_table(f, columns=["pair_id", "source_file", "source_row"])
            frames.append(
                pl.from_arrow(ids)
                .with_columns(pl.col("source_row") + offset, shard=pl.lit(shard["shard"]))
                .with_row_index("row")
            )
        specs = [
            {"parent_shard": s, "row_offset": o, "drop": [], "duplicate_of": []}
            for s, o in zip(parent.shards, offsets, strict=True)
        ]
        if not frames:
            return specs
        every = pl.concat(frames).with_columns(first=pl.col("pair_id").is_first_distinct())
        dups = every.filter(~pl.col("first"))
        # Where each duplicated pair was kept; formatted only for the ids that repeat.
        kept = every.filter(pl.col("first") & pl.col("pair_id").is_in(dups["pair_id"].implode()))
        kept = kept.select("pair_id", kept_at=pl.format("{}:{}", "source_file", "source_row"))
        dups = dups.join(kept, on="pair_id")
        for (shard,), group in dups.sort("shard", "row").group_by("shard", maintain_order=True):
            specs[shard]["drop"] = group["row"].to_list()
            specs[shard]["duplicate_of"] = group["kept_at"].to_list()
        return specs

    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        shard, offset = spec["parent_shard"], spec["row_offset"]
        data_in = next(f for f in shard["files"] if f["kind"] == "data")
        rejects_in = next(f for f in shard["files"] if f["kind"] == "rejects")
        fs, root = fsio.resolve(self.out)
        data_rel = f"data/{part_name(index)}.parquet"
        dups_rel = f"rejects/{part_name(index)}.parquet"
        drop = np.asarray(spec["drop"], dtype=np.int64)
        kept_at = dict(zip(spec["drop"], spec["duplicate_of"], strict=True))
        dup_rows: list[dict] = []
        with fsio.AtomicParquetWriter(fs, fsio.join(root, data_rel), schema.PAIR_SCHEMA) as data:
            row = 0
            for table in self._read(NORMALIZE_DIR, data_in, offset, schema.PAIR_SCHEMA):
                local = drop[(drop >= row) & (drop < row + table.num_rows)] - row
                keep = np.ones(table.num_rows, dtype=bool)
                keep[local] = False
                if local.size:  # one take per batch, not one to_pylist of a whole row per dup
                    picked = table.select(["source", "source_file", "source_row", "pair_id"])
                    dup_rows += [
                        self._dup_record(record, kept_at[int(i) + row])
                        for record, i in zip(
                            picked.take(pa.array(local)).to_pylist(), local, strict=True
                        )
                    ]
                data.write(table.filter(pa.array(keep)))
                row += table.num_rows
        with fsio.AtomicParquetWriter(fs, fsio.join(root, dups_rel), schema.REJECT_SCHEMA) as dw:
            dw.write(pa.Table.from_pylist(dup_rows, schema=schema.REJECT_SCHEMA))
        counts = {**shard["counts"], "rows": data.rows, "duplicates": len(dup_rows)}
        accounted = counts["rows"] + counts["quarantined"] + counts["contaminated"] + len(dup_rows)
        if accounted != counts["input_rows"]:
            raise StageError(
                f"shard {index}: {counts['input_rows']} input rows but {accounted} accounted for"
            )
        return {
            "shard": index,
            "files": [
                {"path": data_rel, "kind": "data", "rows": data.rows, "bytes": data.size()},
                self._normalize_rejects(index, rejects_in, offset),
                {"path": dups_rel, "kind": "rejects", "rows": dw.rows, "bytes": dw.size()},
            ],
            "counts": counts,
        }

    def _read(
        self, directory: str, entry: dict[str, Any], offset: int, file_schema: pa.Schema
    ) -> Iterator[pa.Table]:
        """A file of the normalize stage in batches, its ``source_row`` moved on by ``offset``."""
        fs, path = fsio.resolve(fsio.join(self.out, directory, entry["path"]))
        column = file_schema.get_field_index("source_row")
        with fs.open_input_file(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=self.batch_rows):
                table = pa.Table.from_batches([batch]).cast(file_schema)
                if offset:
                    moved = pc.add(table.column(column), offset)
                    table = table.set_column(column, file_schema.field(column), moved)
                yield table

    def _normalize_rejects(self, index: int, entry: dict[str, Any], offset: int) -> dict:
        """The normalize stage's rejects of this shard: that file itself where its rows are at
        their true lines, else a copy here with them moved on by ``offset``."""
        if not offset:
            return {**entry, "path": f"{NORMALIZE_DIR}/{entry['path']}"}
        fs, root = fsio.resolve(self.out)
        rel = f"rejects/{part_name(index)}-normalize.parquet"
        with fsio.AtomicParquetWriter(fs, fsio.join(root, rel), schema.REJECT_SCHEMA) as out:
            for table in self._read(NORMALIZE_DIR, entry, offset, schema.REJECT_SCHEMA):
                out.write(table)
        return {"path": rel, "kind": "rejects", "rows": out.rows, "bytes": out.size()}

    def _dup_record(self, row: dict[str, Any], kept_at: str) -> dict[str, Any]:
        error = RowError("duplicate", f"exact duplicate of the pair at {kept_at}")
        record = rows.reject_row(
            self.run_id,
            row["source"],
            row["source_file"],
            row["source_row"],
            error,
            None,
            row["pair_id"],
        )
        return {**record, "duplicate_of": kept_at}


def _row_offsets(shards: tuple[dict[str, Any], ...]) -> list[int]:
    """For each normalize shard, the lines of its file before its byte range (0 but for the
    second and later ranges of a file): what turns its row numbers into true lines."""
    before: dict[str, int] = {}
    offsets = []
    for shard in shards:
        path = shard["spec"]["path"]
        offsets.append(before.get(path, 0))
        before[path] = offsets[-1] + shard.get("lines", 0)
    return offsets


def run_ingest(
    config: IngestConfig, executor: ExecutorConfig | None = None, progress: bool = True
) -> str:
    """Run both ingest stages; return the final manifest URI (``OUT/manifest.json``)."""
    normalized = run_stage(NormalizeStage(config), executor, progress)
    return run_stage(DedupStage(config, normalized), executor, progress)


def ingest_counts(out: str) -> dict[str, int]:
    """The accounting of a finished ingest output (what ``synpref inspect`` prints)."""
    counts = dict(load_manifest(out).counts)
    for key in ("input_rows", "rows", "quarantined", "duplicates", "contaminated"):
        counts.setdefault(key, 0)
    return counts
