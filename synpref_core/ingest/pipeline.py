"""The ingest pipeline: read sources, normalise, validate, decontaminate, deduplicate.

Two stages, each with shards, markers and a manifest (see ``synpref_core.stages``)::

    OUT/_stages/normalize/   data/ rejects/ _markers/ manifest.json   (stage "ingest")
    OUT/                     data/ rejects/ _markers/ manifest.json   (stage "dedup")

``ingest`` turns every input record into pair rows or quarantined rows (with a reason), and drops
pairs overlapping benchmark prompts. ``dedup`` removes exact duplicates on (conversation, chosen,
rejected) across all shards, keeping the first in input order. The final manifest's counts obey
``input_rows = rows + quarantined + contaminated + duplicates``; a shard that breaks this raises.

Run locally: ``synpref ingest --format hh-rlhf data/hh-rlhf/... --out OUT``; at scale, the
``ingest`` Prefect flow runs the same stages as Ray tasks on a cluster.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from synpref_core import schema
from synpref_core.config import ExecutorConfig, IngestConfig, SourceSpec, config_hash
from synpref_core.curation.decontam import benchmark_ngrams, contaminated_rows, conversation_texts
from synpref_core.curation.validate import validate_draft
from synpref_core.executors import run
from synpref_core.ingest import columnar
from synpref_core.ingest.formats import ADAPTERS, document_records
from synpref_core.ingest.readers import (
    MalformedInputError,
    RowError,
    expand_paths,
    iter_jsonl,
    iter_parquet,
    plan_file,
    read_document,
)
from synpref_core.io import fs as fsio
from synpref_core.stages import ShardResult, Stage, StageError, load_manifest, part_name

Record = tuple[int, Any, dict[str, Any]]
Batch = tuple[pa.Table, list[dict], int]  # pairs, rejects, input records read
NORMALIZE_DIR = "_stages/normalize"  # the ingest stage's directory inside the output
# The normalize stage's pair files are read once, by dedup, which rewrites them compressed:
# compressing them too costs more CPU than the extra bytes cost I/O.
INTERMEDIATE_COMPRESSION = "none"


def ingest_identity(config: IngestConfig) -> str:
    """Hash of what the output depends on: the config without its output location."""
    return config_hash(config.model_copy(update={"out": ""}))


def iter_records(source: SourceSpec, spec: dict[str, Any], batch_rows: int) -> Iterator[Record]:
    """(row, raw record or RowError, extras) for one shard of one source file."""
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
        for line, raw in iter_jsonl(spec):
            yield line - 1, raw, {}


def _raw_text(raw: Any) -> str:
    if isinstance(raw, RowError):
        return raw.raw or ""
    try:
        return orjson.dumps(raw, default=str).decode()
    except TypeError:  # lone surrogates: keep them escaped rather than lose the row
        return json.dumps(raw, ensure_ascii=True, default=str)


def _attribute(value: str | None) -> dict[str, str] | None:
    return {"value": value, "source": "source"} if value is not None else None


class IngestStage(Stage):
    """Normalise + validate + decontaminate each input shard into pair rows and rejects."""

    name = "ingest"

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
        self._benchmark = self._benchmark_ngrams()
        return specs

    def _benchmark_ngrams(self) -> np.ndarray:
        decontam = self.ingest.decontamination
        texts: set[str] = set()
        for bench in decontam.benchmarks:
            for path in expand_paths(bench.paths):
                for spec in plan_file(path, self.ingest.shard_bytes):
                    for _, raw, _ in iter_records(bench, spec, self.ingest.batch_rows):
                        try:
                            drafts = (
                                ADAPTERS[bench.format](raw, bench)
                                if not isinstance(raw, RowError)
                                else []
                            )
                        except RowError:
                            continue  # a broken benchmark row has no prompt to protect
                        texts.update(
                            "\n".join(m["content"] for m in d["conversation"]) for d in drafts
                        )
        return benchmark_ngrams(sorted(texts), decontam.ngram)

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
        # The columnar path handles plain-string `pairs` JSONL shards; it declines (None)
        # anything else, which the row path below handles.
        batches = columnar.pairs_batches(self, spec, source) or self._row_batches(source, spec)
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
        return {
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

    def _row_batches(self, source: SourceSpec, spec: dict[str, Any]) -> Iterator[Batch]:
        """(pairs table, rejects, records read) per ``batch_rows`` rows, record by record."""
        pairs: list[dict] = []
        bad: list[dict] = []
        records = 0
        for row, raw, extra in iter_records(source, spec, self.ingest.batch_rows):
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
            bad.append(self._reject(source, path, row, err.code, err.reason, _raw_text(raw)))
            return
        for draft in drafts:
            try:
                validate_draft(draft, self.ingest.validation.max_field_chars)
            except RowError as err:
                bad.append(self._reject(source, path, row, err.code, err.reason, _raw_text(raw)))
                continue
            pairs.append(self._pair_row(source, path, row, {**extra, **draft}))

    def _reject(
        self,
        source: SourceSpec,
        path: str,
        row: int,
        code: str,
        reason: str,
        raw: str,
        pair_id: str | None = None,
    ) -> dict[str, Any]:
        return {
            "reason_code": code,
            "reason": reason,
            "source": source.source_name,
            "source_file": path,
            "source_row": row,
            "pair_id": pair_id,
            "duplicate_of": None,
            "raw": raw,
            "run_id": self.run_id,
        }

    def _pair_row(self, source: SourceSpec, path: str, row: int, d: dict[str, Any]) -> dict:
        votes = d.get("human_votes")
        return {
            "pair_id": schema.pair_id(d["conversation"], d["chosen"], d["rejected"]),
            "conversation": d["conversation"],
            "chosen": d["chosen"],
            "rejected": d["rejected"],
            "task_category": None,
            "objectivity": None,
            "controversiality": _attribute(d.get("controversiality")),
            "desired_attributes": None,
            "annotation_guideline": None,
            "status": source.status,
            "decided_by": "source",
            "evidence": {"human_votes": votes} if votes is not None else None,
            "round": None,
            "run_id": self.run_id,
            "source": source.source_name,
            "source_file": path,
            "source_row": row,
            "source_subset": d.get("subset"),
            "parent_id": None,
            "group_id": d.get("group_id"),
            "meta": json.dumps(d["meta"], sort_keys=True, default=str) if d.get("meta") else None,
        }

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
        if source.decontaminate and self._benchmark is not None and table.num_rows:
            texts = conversation_texts(table.column("conversation"))
            hit = contaminated_rows(texts, self._benchmark, ngram)
            if hit.size:
                cols = [
                    "conversation",
                    "chosen",
                    "rejected",
                    "source_file",
                    "source_row",
                    "pair_id",
                ]
                for p in table.select(cols).take(pa.array(hit)).to_pylist():
                    raw = orjson.dumps({k: p[k] for k in cols[:3]}).decode()
                    reason = f"shares a {ngram}-gram with a benchmark prompt"
                    bad.append(
                        self._reject(
                            source,
                            p["source_file"],
                            p["source_row"],
                            "contaminated",
                            reason,
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


class DedupStage(Stage):
    """Exact dedup on the content id across every shard of the ingest stage, first one wins."""

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
        frames = []
        for shard in parent.shards:
            entry = next(f for f in shard["files"] if f["kind"] == "data")
            path = fsio.join(parent.dir, entry["path"])
            fs, inner = fsio.resolve(path)
            with fs.open_input_file(inner) as f:
                ids = pq.read_table(f, columns=["pair_id", "source_file", "source_row"])
            frames.append(
                pl.from_arrow(ids).with_columns(shard=pl.lit(shard["shard"])).with_row_index("row")
            )
        specs = [{"parent_shard": s, "drop": [], "duplicate_of": []} for s in parent.shards]
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
        shard = spec["parent_shard"]
        data_in = next(f for f in shard["files"] if f["kind"] == "data")
        rejects_in = next(f for f in shard["files"] if f["kind"] == "rejects")
        fs, root = fsio.resolve(self.out)
        data_rel = f"data/{part_name(index)}.parquet"
        dups_rel = f"rejects/{part_name(index)}.parquet"
        drop = np.asarray(spec["drop"], dtype=np.int64)
        kept_at = dict(zip(spec["drop"], spec["duplicate_of"], strict=True))
        in_fs, in_path = fsio.resolve(fsio.join(root, NORMALIZE_DIR, data_in["path"]))
        dup_rows: list[dict] = []
        with (
            fsio.AtomicParquetWriter(fs, fsio.join(root, data_rel), schema.PAIR_SCHEMA) as data,
            in_fs.open_input_file(in_path) as f,
        ):
            offset = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=self.batch_rows):
                table = pa.Table.from_batches([batch]).cast(schema.PAIR_SCHEMA)
                local = drop[(drop >= offset) & (drop < offset + table.num_rows)] - offset
                keep = np.ones(table.num_rows, dtype=bool)
                keep[local] = False
                if local.size:  # one take per batch, not one to_pylist of a whole row per dup
                    picked = table.select(["source", "source_file", "source_row", "pair_id"])
                    rows = picked.take(pa.array(local)).to_pylist()
                    dup_rows += [
                        self._dup_record(row, kept_at[int(i) + offset])
                        for row, i in zip(rows, local, strict=True)
                    ]
                data.write(table.filter(pa.array(keep)))
                offset += table.num_rows
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
                {**rejects_in, "path": f"{NORMALIZE_DIR}/{rejects_in['path']}"},
                {"path": dups_rel, "kind": "rejects", "rows": dw.rows, "bytes": dw.size()},
            ],
            "counts": counts,
        }

    def _dup_record(self, row: dict[str, Any], kept_at: str) -> dict[str, Any]:
        return {
            "reason_code": "duplicate",
            "reason": f"exact duplicate of the pair at {kept_at}",
            "source": row["source"],
            "source_file": row["source_file"],
            "source_row": row["source_row"],
            "pair_id": row["pair_id"],
            "duplicate_of": kept_at,
            "raw": None,
            "run_id": self.run_id,
        }


def run_ingest(
    config: IngestConfig, executor: ExecutorConfig | None = None, progress: bool = True
) -> str:
    """Run both ingest stages; return the final manifest URI (``OUT/manifest.json``)."""
    normalized = run(IngestStage(config), executor, progress)
    return run(DedupStage(config, normalized), executor, progress)


def ingest_counts(out: str) -> dict[str, int]:
    """The accounting of a finished ingest output (what ``synpref inspect`` prints)."""
    counts = dict(load_manifest(out).counts)
    for key in ("input_rows", "rows", "quarantined", "duplicates", "contaminated"):
        counts.setdefault(key, 0)
    return counts
