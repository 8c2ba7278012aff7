"""Ingest flow: bundled or user datasets → validated, decontaminated, deduplicated pair shards.

Run locally on embedded defaults (local Ray, MLflow on SQLite, the bundled real datasets):

    python -m flows.ingest                      # or: make demo
    python -m flows.ingest --config my.yaml     # an IngestFlowConfig YAML

At scale: deploy with infra/prefect/prefect.yaml, set ``runtime.executor.ray_address`` to the Ray
cluster, ``runtime.tracking.tracking_uri`` to the MLflow server and ``ingest.out`` to an
``s3://`` URI. In the Prefect UI the config renders as a form.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from synpref_core import tracking
from synpref_core.cli import print_counts
from synpref_core.config import (
    DecontamConfig,
    IngestConfig,
    RuntimeConfig,
    SourceSpec,
    StrictModel,
    load_config,
)
from synpref_core.ingest.pipeline import ingest_counts
from synpref_core.io.lock import output_lock
from tasks.ingest import dedup, normalize
from tasks.tracking import record_manifest

DATA = Path(__file__).resolve().parents[1] / "data"


def bundled_ingest_config() -> IngestConfig:
    """The embedded default: the real datasets shipped in data/, in their suggested roles
    (shared/data/README.md): hh-rlhf harmless as the unverified pool, PandaLM and LLMBar's
    natural/adversarial sets as human-verified gold, decontaminated against the evaluation
    prompts of LLMBar's processed sets (incl. MT-Bench) and OffsetBias."""
    llmbar = DATA / "llmbar" / "Dataset"
    return IngestConfig(
        sources=[
            SourceSpec(
                format="hh-rlhf",
                name="hh-rlhf-harmless",
                paths=[str(DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz")],
            ),
            SourceSpec(
                format="pandalm", status="gold", paths=[str(DATA / "pandalm" / "testset-v1.json")]
            ),
            SourceSpec(format="llmbar", status="gold", paths=[str(llmbar / "LLMBar")]),
        ],
        decontamination=DecontamConfig(
            benchmarks=[
                SourceSpec(format="llmbar", paths=[str(llmbar / "Processed")]),
                SourceSpec(format="offsetbias", paths=[str(DATA / "offsetbias")]),
            ]
        ),
    )


class IngestFlowConfig(StrictModel):
    """What to ingest and where to run. Defaults are values (not factories), so the Prefect form
    shows them."""

    ingest: IngestConfig = Field(
        bundled_ingest_config(), description="Sources and cleaning (default: the bundled data)."
    )
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="Executor and MLflow.")


@flow(name="ingest")
def ingest_flow(config: IngestFlowConfig = IngestFlowConfig()) -> str:  # noqa: B008
    """Ingest every source of ``config.ingest``; returns the final manifest URI.

    Args:
        config: The sources, their cleaning, and the runtime (executor, MLflow).
    """
    tags = {"flow": "ingest", "prefect_flow_run_id": str(flow_run.id or "")}
    with tracking.start_run(config.runtime.tracking, "ingest", tags):
        tracking.log_config(config)
        with output_lock(config.ingest.out):  # no other run between the two stages
            normalized = normalize(config.ingest, config.runtime.executor)
            record_manifest(normalized, prefix="normalize.")
            final = dedup(config.ingest, config.runtime.executor, normalized)
        record_manifest(final)
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="IngestFlowConfig YAML (default: embedded)")
    args = parser.parse_args(argv)
    config = load_config(args.config, IngestFlowConfig) if args.config else IngestFlowConfig()
    manifest = ingest_flow(config)
    out = config.ingest.out
    print_counts(ingest_counts(out), out)
    print(f"manifest: {manifest}\n")
    print("Next:")
    print(f"  .venv/bin/synpref inspect {out}                       # these counts (--json too)")
    print(f"  .venv/bin/synpref export {out} --out pairs.parquet    # TRL / OpenRLHF rows")
    print("  make flow-train-rm    # train a MiniLM reward model on the bundled pairs")
    print("  make flow-retrieve    # one adaptive-retrieval round with the trained RM")
    print("  make server           # the Prefect UI on http://127.0.0.1:4200")


if __name__ == "__main__":
    main()
