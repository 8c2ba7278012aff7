"""What a Stage-1 round calls (DESIGN §2 step 4): open a verification batch on the round's slice,
and collect the verdicts humans have finished as a gold pair stage.

How a round waits for humans (ours): it does not block. Round N calls
:func:`create_verification_batch` on its candidates and goes on; humans work in the app at their
pace; round N+1 starts by calling :func:`collect_gold`, which exports every item decided so far,
in every batch, as ``<gold_root>/round-<N+1>`` (a pair stage: shards + manifest, recorded in
MLflow when tracking is given). That stage is the complete human gold set at that moment, so a
round reads only the latest one; items still pending or awaiting adjudication are picked up by
whichever later round finds them decided. No flow run sits suspended for days, and no verdict
is lost when a round ends early.

    summary = create_verification_batch(VerificationConfig(pairs=candidates, round=3,
                                                           annotators=["ana", "ben"]))
    gold = collect_gold(VerificationConfig(pairs=candidates, round=4, annotators=["ana"]))
"""

from __future__ import annotations

from pydantic import Field

from synpref_core.config import DEFAULT_HOME, StrictModel, TrackingConfig
from synpref_core.human import store
from synpref_core.human.batches import BatchConfig, BatchSummary, create_batch
from synpref_core.human.export import GoldExportConfig, export_gold, record_export
from synpref_core.io import fs as fsio
from synpref_core.schema import Status


class VerificationConfig(StrictModel):
    """The human verification step of a round."""

    db_url: str = Field(store.DEFAULT_DB_URL, description="The verification app's store.")
    pairs: str = Field(description="The round's pairs to draw from (a finished pair stage).")
    round: int = Field(ge=0, description="The round this step belongs to.")
    size: int = Field(100, ge=1, description="Pairs humans verify per round.")
    overlap: int = Field(2, ge=1, description="Annotators per item.")
    annotators: list[str] = Field(min_length=1, description="Accounts that verify.")
    seed: int = Field(0, ge=0)
    statuses: list[Status] | None = Field(None, description="Only pairs with these statuses.")
    gold_root: str = Field(str(DEFAULT_HOME / "human-gold"), description="Gold stages go here.")


def batch_name(round_: int) -> str:
    return f"round-{round_}"


def create_verification_batch(config: VerificationConfig) -> BatchSummary:
    """Open this round's batch (judge disagreements and high controversy first, then random)."""
    batch = BatchConfig(
        pairs=config.pairs,
        name=batch_name(config.round),
        size=config.size,
        overlap=config.overlap,
        annotators=config.annotators,
        seed=config.seed + config.round,
        round=config.round,
        statuses=config.statuses,
    )
    engine = store.open_engine(config.db_url)
    try:
        return create_batch(engine, batch)
    finally:
        engine.dispose()


def collect_gold(config: VerificationConfig, tracking: TrackingConfig | None = None) -> str:
    """Export every item decided so far as this round's gold stage; its manifest URI."""
    out = fsio.join(config.gold_root, batch_name(config.round))
    engine = store.open_engine(config.db_url)
    try:
        uri = export_gold(engine, GoldExportConfig(out=out))
    finally:
        engine.dispose()
    if tracking is not None:
        record_export(uri, tracking, run_name=f"human-gold-{batch_name(config.round)}")
    return uri
