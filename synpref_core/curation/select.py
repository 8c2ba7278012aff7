"""Select a subset of a pair stage: by status, by source, and by a deterministic hash split.

    train = SelectConfig(input=ingested, out=".synpref/train", sources=["hh-rlhf-harmless"],
                         split=(0.0, 0.8))
    held_out = train.model_copy(update={"out": ".synpref/held-out", "split": (0.8, 1.0)})

The split is a function of ``pair_id`` (content-derived) and ``seed`` alone: a pair lands on the
same side on every machine and every re-run, whatever the shard layout or the row order, and the
two halves of complementary ranges never overlap. Training, held-out evaluation and the gold set of
checkpoint selection are all selections of one ingested stage, so lineage stays in manifests.

Every input row is accounted for: ``rows + not_selected = input_rows``, per shard.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from synpref_core import schema
from synpref_core.config import StrictModel
from synpref_core.schema import Status
from synpref_core.stages import MapStage

HASH_BUCKETS = 1 << 32  # split resolution: fractions are exact to ~2e-10


class PairFilter(StrictModel):
    """Which pairs to keep; every filter left at None keeps everything."""

    statuses: list[Status] | None = Field(None, description="Keep these curation statuses.")
    sources: list[str] | None = Field(None, description="Keep these source names.")
    split: tuple[float, float] = Field(
        (0.0, 1.0), description="Keep pairs whose hash falls in [lo, hi) of [0, 1)."
    )
    seed: int = Field(0, ge=0, description="Salt of the split hash: another seed, another split.")

    @model_validator(mode="after")
    def _check_split(self) -> PairFilter:
        lo, hi = self.split
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"split must satisfy 0 <= lo < hi <= 1, got {self.split}")
        return self


class SelectConfig(PairFilter):
    """A :class:`PairFilter` applied to the pair stage ``input``, written to ``out``."""

    input: str = Field(description="Pair stage to select from (its dir or manifest.json).")
    out: str = Field(description="Output stage directory.")
    batch_rows: int = Field(10_000, ge=1)


def split_position(pair_ids: pa.Array, seed: int) -> np.ndarray:
    """Each pair's place in [0, 1): a seeded hash of its id (stable across runs and machines)."""
    # Arrow has no stable hash kernel; a seeded 4-byte BLAKE2b per id costs ~1 µs.
    salt = str(seed).encode()
    values = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(i.encode(), digest_size=4, salt=salt).digest())
            for i in pair_ids.to_pylist()
        ),
        dtype=np.uint64,
        count=len(pair_ids),
    )
    return values.astype(np.float64) / HASH_BUCKETS


def select_mask(table: pa.Table, config: PairFilter) -> np.ndarray:
    """Boolean mask of the rows ``config`` keeps."""
    keep = np.ones(table.num_rows, dtype=bool)
    if config.statuses is not None:
        keep &= pc.is_in(table["status"], pa.array(config.statuses)).to_numpy(zero_copy_only=False)
    if config.sources is not None:
        keep &= pc.is_in(table["source"], pa.array(config.sources)).to_numpy(zero_copy_only=False)
    if config.split != (0.0, 1.0):
        position = split_position(table["pair_id"].combine_chunks(), config.seed)
        keep &= (position >= config.split[0]) & (position < config.split[1])
    return keep


class SelectStage(MapStage):
    """One output shard per data file of the input stage, filtered by :func:`select_mask`."""

    name = "select"
    output_schema = schema.PAIR_SCHEMA
    runtime_fields = frozenset({"out", "batch_rows"})

    def __init__(self, config: SelectConfig):
        super().__init__(config, parent=config.input)

    def map_batch(self, batch: pa.RecordBatch, model: None) -> pa.Table:
        table = pa.Table.from_batches([batch])
        return table.filter(pa.array(select_mask(table, self.settings)))

    def batch_counts(self, batch: pa.RecordBatch, out: pa.Table) -> dict[str, int]:
        return {"input_rows": batch.num_rows, "not_selected": batch.num_rows - out.num_rows}
