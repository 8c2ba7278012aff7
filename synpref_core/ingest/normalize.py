"""The normalize stage: every input record to pair rows or quarantined rows, decontaminated.

One shard per input file, or per byte range of a large plain JSON-lines file. A shard reads its
records (the columnar fast path for plain-string ``pairs`` lines, else record by record through
the format's adapter), validates them, drops pairs sharing an n-gram with a benchmark prompt, and
streams the pairs into Arrow IPC (``data/part-N.arrow``: the columns as they are in memory, read
back by dedup without decoding) and the rejects, with their reason, as Parquet. A byte range's rows
are numbered from its start; the shard records how many lines it holds (``lines``) so that dedup
can number them in the whole file.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import numpy as np
import orjson

# pyarrow imports pandas the first time it builds an array. Importing it here puts it in the
# forkserver that pools preload this module from, so each worker does not pay ~0.2 s CPU again.
import pandas  # noqa: F401
import pyarrow as pa
import pyarrow.fs as pafs

from synpref_core import schema
from synpref_core.config import IngestConfig, SourceSpec, config_hash
from synpref_core.curation.decontam import benchmark_ngrams, contaminated_rows, conversation_texts
from synpref_core.curation.validate import validate_draft
from synpref_core.ingest import columnar, rows
from synpref_core.ingest.formats import ADAPTERS, document_records
from synpref_core.ingest.readers import (
    MalformedInputError,
    RowError,
    expand_paths,
    file_fingerprint,
    is_byte_range,
    iter_jsonl,
    iter_parquet,
    newline_offsets,
    plan_file,
    read_document,
    read_range,
)
from synpref_core.io import fs as fsio
from synpref_core.stages import ShardResult, Stage, part_name

Record = tuple[int, Any, dict[str, Any]]
NORMALIZE_DIR = "_stages/normalize"  # the normalize stage's directory inside the output


def ingest_identity(config: IngestConfig) -> str:
    """Hash of what the output depends on: the config without its output location, and the
    version (:func:`file_fingerprint`) of every input and benchmark file it names. An edited
    input changes it, so the ingest stages and everything derived from them (whose identities
    hold this run id) are computed again."""
    specs = [*config.sources, *config.decontamination.benchmarks]
    files = sorted({path for spec in specs for path in expand_paths(spec.paths)})
    inputs = {path: file_fingerprint(path) for path in files}
    return config_hash(
        {"config": config.model_dump(mode="json", exclude={"out"}), "inputs": inputs}
    )


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
        data_rel = f"data/{part_name(index)}.arrow"
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
            _AtomicArrowWriter(fs, fsio.join(root, data_rel)) as data,
            fsio.AtomicParquetWriter(
                fs, fsio.join(root, rejects_rel), schema.REJECT_SCHEMA
            ) as rejects,
        ):
            for table, bad, records in batches:
                counts["input_records"] += records
                data.write(self._flush(source, table, bad, rejects, counts))
        data_bytes = fs.get_file_info(fsio.join(root, data_rel)).size
        result = {
            "shard": index,
            "files": [
                {"path": data_rel, "kind": "data", "rows": counts["rows"], "bytes": data_bytes},
                {
                    "path": rejects_rel,
                    "kind": "rejects",
                    "rows": rejects.rows,
                    "bytes": rejects.size(),
                },
            ],
            "counts": counts,
        }
        if lines is not None:  # where dedup resumes the numbering for the file's next range
            result["lines"] = lines
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
        rejects: fsio.AtomicParquetWriter,
        counts: dict[str, int],
    ) -> pa.Table:
        """Decontaminate a batch of pairs, count every outcome, write the rejects; return the
        pairs kept."""
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
        rejects.write(pa.Table.from_pylist(bad, schema=schema.REJECT_SCHEMA))
        return table


class _AtomicArrowWriter:
    """Pair tables streamed into one uncompressed Arrow IPC file that appears only on close
    (written under a temporary name, then moved, as ``fsio.AtomicParquetWriter`` does)."""

    def __init__(self, fs: pafs.FileSystem, path: str):
        fs.create_dir(posixpath.dirname(path), recursive=True)
        head, tail = posixpath.split(path)
        self.fs, self.path = fs, path
        self._tmp = posixpath.join(head, f".tmp-{uuid4().hex[:8]}-{tail}")
        self._sink = fs.open_output_stream(self._tmp)
        self._writer = pa.ipc.new_file(self._sink, schema.PAIR_SCHEMA)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(schema.conform(table, schema.PAIR_SCHEMA))

    def __enter__(self) -> _AtomicArrowWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.close()
        self._sink.close()
        if exc_type is None:
            self.fs.move(self._tmp, self.path)
        else:
            self.fs.delete_file(self._tmp)


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
