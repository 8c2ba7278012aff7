"""Prefect task shell of a Stage 1 round's human verification: open the round's batch (and,
when the round replays recorded labels, serve the app and post them over HTTP), then export every
verdict decided so far as the round's gold stage."""

from __future__ import annotations

from prefect import task

from synpref_core.human import store
from synpref_core.human.rounds import (
    VerificationConfig,
    collect_gold,
    create_verification_batch,
    replay_round,
)


@task(name="verify-round")
def verify_round(config: VerificationConfig, datasets: list[str]) -> tuple[dict[str, int], str]:
    """(the batch's counts, the human gold stage: every item decided so far, in any batch).

    ``config.wait == "replay"``: the recorded labels of ``datasets`` are posted through the app
    (served in-process) before collecting; ``"none"``: the batch is opened for ``annotators``
    and the round goes on (a re-run keeps the batch it opened)."""
    if config.wait == "replay":
        counts = replay_round(config, {name: config.replay_data[name] for name in datasets})
    else:
        try:
            summary = create_verification_batch(config)
            counts = {"items": summary.items, "assignments": summary.assignments}
        except store.StoreError as exc:
            if "exists" not in str(exc):
                raise
            counts = {}
    return counts, collect_gold(config)
