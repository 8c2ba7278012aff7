"""Prefect task shell of a Stage 1 round's human verification: open the round's batch (and,
when the round replays recorded labels, serve the app and post them over HTTP), then export every
verdict decided so far as the round's gold stage."""

from __future__ import annotations

from typing import Any

from prefect import task



@task(name="verify-round")
def verify_round(step: Any, pairs: str, round_: int, gold_root: str) -> tuple[dict[str, int], str]:
    """(the batch's counts, the human gold stage's manifest URI)."""
    from synpref_core.human.rounds import VerificationConfig, collect_gold, replay_round

    config = VerificationConfig(
        db_url=step.db_url, pairs=pairs, round=round_, size=step.size, overlap=step.overlap,
        annotators=step.annotators, seed=step.seed, wait=step.wait, gold_root=gold_root,
    )  # fmt: skip
    counts = replay_round(config)
    return counts, collect_gold(config)
