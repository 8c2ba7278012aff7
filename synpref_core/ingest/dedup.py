"""The dedup stage: exact duplicates removed across every shard of the normalize stage.

The plan (in the parent) reads every normalize shard's pair ids and marks each id's repeats after
its first occurrence in input order. Each shard then writes its kept pairs as the final
zstd-compressed Parquet (the one encode of a kept row), a reject per duplicate naming where the
kept copy is, and its rows at their true lines: a byte-range shard's rows move on by the lines of
the ranges of its file before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synpref_core import schema
from synpref_core.config import IngestConfig
from synpref_core.ingest import rows
from synpref_core.ingest.normalize import NORMALIZE_DIR, ingest_identity
from synpref_core.ingest.readers import RowError
from synpref_core.io import fs as fsio
from synpref_core.stages import ShardResult, Stage, StageError, load_manifest, part_name


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
        columns = ["pair_id", "source_file", "source_row"]
        id_schema = pa.schema([schema.PAIR_SCHEMA.field(c) for c in columns])
        frames = []
        for shard, offset in zip(parent.shards, offsets, strict=True):
            entry = next(f for f in shard["files"] if f["kind"] == "data")
            path = fsio.join(parent.dir, entry["path"])
            batches = _read_batches(path, self.batch_rows, columns)
            frames.append(
                pl.from_arrow(pa.Table.from_batches(batches, schema=id_schema))
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
            for table in self._read(data_in, offset, schema.PAIR_SCHEMA):
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
        self, entry: dict[str, Any], offset: int, file_schema: pa.Schema
    ) -> Iterator[pa.Table]:
        """A file of the normalize stage in batches, its ``source_row`` moved on by ``offset``."""
        column = file_schema.get_field_index("source_row")
        path = fsio.join(self.out, NORMALIZE_DIR, entry["path"])
        for batch in _read_batches(path, self.batch_rows):
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
            for table in self._read(entry, offset, schema.REJECT_SCHEMA):
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


def _read_batches(
    path: str, batch_rows: int, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """The record batches of a normalize output file: Arrow IPC pairs or Parquet rejects."""
    fs, inner = fsio.resolve(path)
    with fs.open_input_file(inner) as f:
        if not path.endswith(".arrow"):
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns)
            return
        fields = (
            None if columns is None else [schema.PAIR_SCHEMA.get_field_index(c) for c in columns]
        )
        reader = pa.ipc.open_file(f, options=pa.ipc.IpcReadOptions(included_fields=fields))
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
