"""Export pairs in the ecosystem's preference format (TRL / OpenRLHF), streaming.

Each output row has ``chosen`` and ``rejected`` as whole message lists (the conversation followed
by the assistant turn), which TRL's reward trainer and OpenRLHF's ``--chosen_key/--rejected_key``
read directly, plus ``prompt`` (the conversation) for TRL's explicit-prompt style and the pair's
``pair_id``, ``source`` and ``status`` for traceability.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from synpref_core.io import fs as fsio
from synpref_core.schema import MESSAGE
from synpref_core.stages import iter_batches

EXPORT_SCHEMA = pa.schema(
    [
        ("prompt", pa.list_(MESSAGE)),
        ("chosen", pa.list_(MESSAGE)),
        ("rejected", pa.list_(MESSAGE)),
        ("pair_id", pa.string()),
        ("source", pa.string()),
        ("status", pa.string()),
    ]
)


def to_trl(batch: pa.RecordBatch) -> pa.Table:
    """Pair rows → TRL/OpenRLHF rows (vectorised)."""
    frame = pl.from_arrow(pa.Table.from_batches([batch]))

    def whole(side: str) -> pl.Expr:
        turn = pl.struct(role=pl.lit("assistant"), content=pl.col(side))
        return pl.concat_list(pl.col("conversation"), pl.concat_list(turn)).alias(side)

    out = frame.select(
        pl.col("conversation").alias("prompt"),
        whole("chosen"),
        whole("rejected"),
        "pair_id",
        "source",
        "status",
    )
    return out.to_arrow().cast(EXPORT_SCHEMA)


def export_pairs(stage_dir: str, out: str, statuses: list[str] | None = None) -> int:
    """Write every pair of a stage output (optionally only some statuses) to ``out``.

    Returns the number of rows written.
    """
    batches = iter_batches(stage_dir)  # fails before the output is opened if no manifest
    fs, path = fsio.resolve(out)
    with fsio.AtomicParquetWriter(fs, path, EXPORT_SCHEMA) as writer:
        for batch in batches:
            if statuses:
                batch = batch.filter(pc.is_in(batch.column("status"), pa.array(statuses)))
            if batch.num_rows:
                writer.write(to_trl(batch))
    return writer.rows
