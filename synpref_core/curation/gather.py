"""Gather the pair rows of a list of ids: the candidates a retrieval round found (ids and
provenance only) become a pairs stage the annotation stages can read.

    GatherStage(GatherConfig(ids=".../round-1/candidates", pairs=".../pool", out=".../cands"))

One output file per data file of ``ids``, rows in its order, every row of ``pairs``' schema
(``PAIR_SCHEMA``). An id that ``pairs`` does not hold fails the stage with one line naming it:
ids and pairs from different runs are a wiring mistake, not bad data. The identity includes both
inputs' run ids, so new pairs under the same ids are gathered anew.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pydantic import Field

from synpref_core.config import StrictModel
from synpref_core.io import fs as fsio
from synpref_core.schema import PAIR_SCHEMA
from synpref_core.stages import MapStage, StageError, load_manifest, manifest_uri, stage_identity


class GatherConfig(StrictModel):
    ids: str = Field(description="A finished stage with a pair_id column (e.g. candidates).")
    pairs: str = Field(description="The pairs stage holding those ids.")
    out: str = Field(description="Output stage directory.")
    batch_rows: int = Field(10_000, ge=1)


class GatherStage(MapStage):
    name = "gather"
    columns: ClassVar[list[str] | None] = ["pair_id"]
    output_schema = PAIR_SCHEMA

    def __init__(self, config: GatherConfig):
        self.pairs = load_manifest(config.pairs).require_pairs(self.name)
        super().__init__(config, parent=config.ids)
        self.parents.append(manifest_uri(self.pairs.uri))

    def identity(self) -> str:
        parents = [self.parent, self.pairs]
        return stage_identity(self.name, self.settings, {"out"}, parents)

    def map_batch(self, batch: pa.RecordBatch, model: None) -> pa.Table:
        ids = batch.column("pair_id")
        fs, _ = fsio.resolve(self.pairs.dir)
        paths = [fsio.resolve(p)[1] for p in self.pairs.paths("data")]
        found = ds.dataset(paths, schema=PAIR_SCHEMA, format="parquet", filesystem=fs).to_table(
            filter=pc.field("pair_id").isin(ids)
        )
        position = {pid: i for i, pid in enumerate(found["pair_id"].to_pylist())}
        missing = [pid for pid in ids.to_pylist() if pid not in position]
        if missing:
            raise StageError(
                f"{len(missing)} ids of {self.parent.uri} are not in {self.pairs.uri}, "
                f"e.g. {missing[:3]}"
            )
        return found.take(pa.array([position[pid] for pid in ids.to_pylist()], pa.int64()))
