"""The same stages under the local executor, a local process pool and real Ray give
identical outputs."""

from __future__ import annotations

import pytest

from synpref_core.config import DecontamConfig, ExecutorConfig, IngestConfig, SourceSpec
from synpref_core.ingest.pipeline import run_ingest
from synpref_core.stages import Manifest, load_manifest
from tests.ingest_helpers import DATA, read_dir, write_hh_jsonl


def _config(tmp_path, out: str) -> IngestConfig:
    hh = write_hh_jsonl(tmp_path, copies=2)  # the second copy is all duplicates
    return IngestConfig(
        sources=[
            SourceSpec(format="hh-rlhf", paths=[str(hh)]),
            SourceSpec(format="pandalm", paths=[str(DATA / "pandalm")], status="gold"),
        ],
        decontamination=DecontamConfig(
            benchmarks=[SourceSpec(format="llmbar", paths=[str(DATA / "llmbar")])]
        ),
        out=str(tmp_path / out),
        shard_bytes=2**20,
        batch_rows=700,
    )


def _portable(manifest: Manifest) -> dict:
    """A manifest without what names its own location."""
    return {k: v for k, v in manifest.to_json().items() if k not in ("config", "parents")}


@pytest.mark.slow
def test_local_process_pool_and_ray_outputs_are_identical(tmp_path, ray_local):
    runs = {
        "local": ExecutorConfig(kind="local"),
        "pool": ExecutorConfig(kind="local", workers=2),
        "ray": ExecutorConfig(kind="ray"),
    }
    for name, executor in runs.items():
        run_ingest(_config(tmp_path, name), executor, progress=False)
    base = tmp_path / "local"
    manifest = load_manifest(str(base))
    assert manifest.num_shards > 3 and manifest.counts["duplicates"] >= 2303
    for name in ("pool", "ray"):
        other = tmp_path / name
        assert _portable(load_manifest(str(other))) == _portable(manifest)
        for pattern in (
            "data/*",
            "rejects/*",
            "_stages/normalize/data/*",
            "_stages/normalize/rejects/*",
        ):
            assert read_dir(other, pattern).equals(read_dir(base, pattern)), (name, pattern)
