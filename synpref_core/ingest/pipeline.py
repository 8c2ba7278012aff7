"""The ingest pipeline: read sources, normalise, validate, decontaminate, deduplicate.

Two stages, each with shards, markers and a manifest (see ``synpref_core.stages``)::

    OUT/_stages/normalize/   data/ rejects/ _markers/ manifest.json   (stage "normalize")
    OUT/                     data/ rejects/ _markers/ manifest.json   (stage "dedup")

``normalize`` turns every input record into pair rows or quarantined rows (with a reason), and
drops pairs overlapping benchmark prompts. ``dedup`` removes exact duplicates on (conversation,
chosen, rejected) across all shards, keeping the first in input order, and writes the final pair
files. Normalize's pair files are Arrow IPC (``.arrow``): a copy of the in-memory columns that
dedup reads back without decoding, so each kept row is encoded into Parquet once, by dedup.

Rows of a byte-range shard are numbered from its start by the worker that counts its lines;
dedup adds the lines of the ranges before it, so the final ``source_row`` is the record's true
line. The final manifest's counts obey ``input_rows = rows + quarantined + contaminated +
duplicates``; a shard that breaks this raises.

Run locally: ``synpref ingest --format hh-rlhf data/hh-rlhf/... --out OUT``; at scale, the
``ingest`` Prefect flow runs the same stages as Ray tasks on a cluster.
"""

from __future__ import annotations

from synpref_core.config import ExecutorConfig, IngestConfig
from synpref_core.executors import run
from synpref_core.ingest.dedup import DedupStage
from synpref_core.ingest.normalize import NormalizeStage
from synpref_core.io.lock import output_lock
from synpref_core.stages import load_manifest

__all__ = ["DedupStage", "NormalizeStage", "ingest_counts", "run_ingest"]


def run_ingest(
    config: IngestConfig, executor: ExecutorConfig | None = None, progress: bool = True
) -> str:
    """Run both ingest stages; return the final manifest URI (``OUT/manifest.json``). The
    output is locked for both, so no other run starts between them."""
    with output_lock(config.out):
        normalized = run(NormalizeStage(config), executor, progress)
        return run(DedupStage(config, normalized), executor, progress)


def ingest_counts(out: str) -> dict[str, int]:
    """The accounting of a finished ingest output (what ``synpref inspect`` prints)."""
    counts = dict(load_manifest(out).counts)
    for key in ("input_rows", "rows", "quarantined", "duplicates", "contaminated"):
        counts.setdefault(key, 0)
    return counts
