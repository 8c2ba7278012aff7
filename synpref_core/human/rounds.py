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

With ``wait="replay"`` (the demo, tests) no person is needed: :func:`replay_round` opens the
round's batch for the replay accounts of the bundled datasets and submits their recorded human
labels through the app's HTTP API, served in-process (``serve.py``), so the next round collects
them like any other verdicts.

    counts = replay_round(config, {"hh-rlhf": config.replay_data["hh-rlhf"]})
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from synpref_core.config import DEFAULT_HOME, StrictModel, TrackingConfig
from synpref_core.human import store
from synpref_core.human.batches import BatchConfig, BatchSummary, create_batch
from synpref_core.human.export import GoldExportConfig, export_gold, record_export
from synpref_core.io import fs as fsio
from synpref_core.schema import Status

# The datasets bundled in the repository's data/ folder (as flows/ingest.py finds them).
DATA = Path(__file__).resolve().parents[2] / "data"
BUNDLED_REPLAY_DATA = {
    "hh-rlhf": [str(DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz")],
    "pandalm": [str(DATA / "pandalm" / "testset-v1.json")],
    "llmbar": [str(DATA / "llmbar" / "Dataset" / "LLMBar")],
}
REPLAY_NOTE = "replay of real human labels recorded in the {dataset} dataset"


class VerificationConfig(StrictModel):
    """The human verification step of a round."""

    db_url: str = Field(store.DEFAULT_DB_URL, description="The verification app's store.")
    pairs: str = Field(description="The round's pairs to draw from (a finished pair stage).")
    round: int = Field(ge=0, description="The round this step belongs to.")
    size: int = Field(100, ge=1, description="Pairs humans verify per round.")
    overlap: int = Field(2, ge=1, description="Annotators per item.")
    annotators: list[str] = Field(
        [], description="Accounts that verify (wait=none; wait=replay uses the replay accounts)."
    )
    seed: int = Field(0, ge=0)
    statuses: list[Status] | None = Field(None, description="Only pairs with these statuses.")
    gold_root: str = Field(str(DEFAULT_HOME / "human-gold"), description="Gold stages go here.")
    wait: Literal["none", "replay"] = Field(
        "none",
        description=(
            "How the round gets its verdicts. none: the round opens the batch and goes on "
            "(humans work in the app; the next round collects). replay: the round replays "
            "recorded human labels through the app's HTTP API (demo, tests)."
        ),
    )
    replay_data: dict[str, list[str]] = Field(
        BUNDLED_REPLAY_DATA,
        description="wait=replay: each dataset's files of recorded labels (default: bundled).",
    )

    @model_validator(mode="after")
    def _check_annotators(self) -> VerificationConfig:
        if self.wait == "none" and not self.annotators:
            raise ValueError("annotators: name at least one account (or set wait to 'replay')")
        return self


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


def replay_round(config: VerificationConfig, datasets: dict[str, list[str]]) -> dict[str, int]:
    """This round's human step with no person: the replay accounts of ``datasets`` (created when
    missing), the round's batch for them (kept when it exists), the app served in-process and
    every dataset's recorded labels replayed over HTTP. Counts: ``items`` in the batch,
    ``submitted`` verdicts, ``already`` answered before, ``unmatched`` (assigned items the
    dataset holds no label for), ``refused`` by the app. Re-running submits nothing new.

    Give only the datasets the round's pairs come from: items are assigned round robin over
    all their accounts (overlap at most the number of accounts: 1 for hh-rlhf), so an item
    given to another dataset's account stays pending.
    """
    from synpref_core.human.replay import ACCOUNTS, ReplayError, replay
    from synpref_core.human.serve import serve_app

    if unknown := sorted(set(datasets) - set(ACCOUNTS)):
        choices = ", ".join(ACCOUNTS)
        raise ReplayError(f"unknown dataset {', '.join(unknown)}; choose from {choices}")
    accounts = {name: ds for ds in datasets for name in ACCOUNTS[ds]}
    engine = store.open_engine(config.db_url)
    try:
        credentials = ensure_replay_accounts(engine, accounts)
        items = _batch_items(engine, batch_name(config.round))
    finally:
        engine.dispose()
    if items is None:
        replayed = config.model_copy(
            update={"annotators": list(accounts), "overlap": min(config.overlap, len(accounts))}
        )
        items = create_verification_batch(replayed).items
    counts = dict.fromkeys(("items", "submitted", "already", "unmatched", "refused"), 0)
    counts["items"] = items
    with serve_app(config.db_url) as url:
        for dataset, paths in datasets.items():
            mine = {n: credentials[n] for n in ACCOUNTS[dataset]}
            result = replay(url, dataset, paths, mine, batch_name(config.round))
            counts["submitted"] += sum(result.submitted.values())
            counts["already"] += result.already
            counts["unmatched"] += result.unmatched
            counts["refused"] += len(result.refused)
    return counts


def ensure_replay_accounts(engine: Engine, accounts: dict[str, str]) -> dict[str, str]:
    """Replay accounts (name → dataset) as annotators with fresh random passwords, held in
    memory only (an existing replay account gets a new one); name → password. An account of
    that name that is not a replay account is refused, never taken over."""
    from synpref_core.human import auth

    credentials = {}
    for name, dataset in accounts.items():
        password = secrets.token_urlsafe(18)
        hashed = auth.hash_password(password)  # the slow hash outside the write transaction
        with store.writing(engine) as session:
            user = session.scalar(select(store.User).where(store.User.name == name))
            if user is not None:
                if not user.note.startswith("replay of real human labels"):
                    raise store.StoreError(f"account {name!r} exists and is not a replay account")
                user.password_hash = hashed
                store.audit(session, None, "reset_password", f"user:{name}", {"note": user.note})
        if user is None:
            auth.create_user(
                engine, name, "annotator", password, REPLAY_NOTE.format(dataset=dataset)
            )
        credentials[name] = password
    return credentials


def _batch_items(engine: Engine, name: str) -> int | None:
    """How many items the batch ``name`` holds; None when there is no such batch."""
    with store.reading(engine) as session:
        batch_id = session.scalar(select(store.Batch.id).where(store.Batch.name == name))
        if batch_id is None:
            return None
        return session.scalar(select(func.count()).where(store.Item.batch_id == batch_id))
