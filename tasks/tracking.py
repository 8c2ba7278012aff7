"""Prefect task shell that records a finished stage output in the active MLflow run."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from synpref_core import tracking
from synpref_core.stages import load_manifest


@task(name="record-manifest")
def record_manifest(manifest_uri: str, prefix: str = "") -> dict[str, int]:
    """Log a manifest's counts (MLflow metrics + a Prefect table artifact) and the manifest file."""
    counts = load_manifest(manifest_uri).counts
    tracking.log_counts(counts, prefix)
    tracking.log_manifest(manifest_uri)
    create_table_artifact(
        key=f"{prefix or 'stage'}-counts".replace("_", "-").replace(".", "-").lower(),
        table=[{"outcome": k, "rows": v} for k, v in sorted(counts.items())],
        description=f"Counts of {manifest_uri}",
    )
    return counts
