"""Writing a small table as a finished stage, for tests that need hand-made input rows (a pair
with a human attribute, a wild set with known labels): a real one-shard stage with its marker
and manifest, read back by the stages under test like any other."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from synpref_core.config import config_hash
from synpref_core.io import fs as fsio
from synpref_core.schema import PAIR_SCHEMA, fingerprint
from synpref_core.stages import ShardResult, Stage


class TableStage(Stage):
    name = "table"

    def __init__(self, table: pa.Table, out: str, schema: pa.Schema = PAIR_SCHEMA):
        self.table, self.schema = table, schema
        identity = config_hash({"rows": table.to_pylist()})
        super().__init__(out, {"rows": table.num_rows}, identity, [])

    def schemas(self) -> dict[str, str]:
        return {"data": fingerprint(self.schema)}

    def plan(self) -> list[dict[str, Any]]:
        return [{}]

    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        fs, root = fsio.resolve(self.out)
        rel = "data/part-00000.parquet"
        with fsio.AtomicParquetWriter(fs, fsio.join(root, rel), self.schema) as out:
            out.write(self.table)
        entry = {"path": rel, "kind": "data", "rows": out.rows, "bytes": out.size()}
        return {"shard": index, "files": [entry], "counts": {"rows": out.rows}}


def write_stage(table: pa.Table, out: str, schema: pa.Schema = PAIR_SCHEMA) -> str:
    """Write ``table`` as a finished stage at ``out``; returns the stage directory."""
    from synpref_core.executors import run

    run(TableStage(table, out, schema), progress=False)
    return out
