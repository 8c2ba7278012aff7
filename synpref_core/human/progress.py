"""What the admin page shows: per-batch progress and agreement, per-annotator throughput and
agreement, and the disagreements to adjudicate, computed from the store in a few queries.

Agreement per batch is Krippendorff's α over every item's votes (stored order: chosen /
rejected / undecidable), plus, when the batch has two annotators per item, Cohen's κ of each
pair of annotators over the items they share, averaged weighted by those items. An annotator's
agreement is the share of their verdicts on decided items that match the outcome.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from synpref_core.human import store
from synpref_core.human.agreement import cohen_kappa, krippendorff_alpha
from synpref_core.human.verdicts import decide


@dataclass
class BatchProgress:
    name: str
    round: int | None
    overlap: int
    items: int = 0
    assignments: int = 0
    verdicts: int = 0
    states: dict[str, int] = field(default_factory=dict)
    alpha: float | None = None
    kappa: float | None = None


@dataclass
class AnnotatorStats:
    name: str
    note: str
    assigned: int = 0
    done: int = 0
    median_seconds: float | None = None
    per_hour: float | None = None  # verdicts per hour of time on item
    agreement: float | None = None


def _votes(session: Session) -> dict[int, list[tuple[int, str]]]:
    votes: dict[int, list[tuple[int, str]]] = {}
    rows = session.execute(
        select(store.Verdict.item_id, store.Verdict.user_id, store.Verdict.preferred).order_by(
            store.Verdict.user_id
        )
    )
    for item_id, user_id, preferred in rows:
        votes.setdefault(item_id, []).append((user_id, preferred))
    return votes


def mean_kappa(pairs: dict[tuple[int, int], tuple[list[str], list[str]]]) -> float | None:
    """Cohen's κ of each pair of annotators over the items they share, averaged weighted by
    those items (pairs whose κ is undefined left out)."""
    scored = [(cohen_kappa(a, b), len(a)) for a, b in pairs.values()]
    scored = [(k, n) for k, n in scored if k is not None]
    total = sum(n for _, n in scored)
    return sum(k * n for k, n in scored) / total if total else None


def batch_progress(session: Session) -> tuple[list[BatchProgress], list[dict]]:
    """Every batch's progress and agreement, and the items awaiting adjudication."""
    votes = _votes(session)
    adjudicated = dict(
        session.execute(select(store.Adjudication.item_id, store.Adjudication.preferred)).all()
    )
    assigned = dict(
        session.execute(
            select(store.Assignment.item_id, func.count()).group_by(store.Assignment.item_id)
        ).all()
    )
    out, todo = [], []
    for batch in session.scalars(select(store.Batch).order_by(store.Batch.id)):
        item_ids = session.scalars(select(store.Item.id).where(store.Item.batch_id == batch.id))
        progress = BatchProgress(batch.name, batch.round, batch.overlap)
        units, pairs = [], {}
        for item_id in item_ids:
            mine = votes.get(item_id, [])
            outcome = decide([v for _, v in mine], batch.overlap, adjudicated.get(item_id))
            progress.items += 1
            progress.assignments += assigned.get(item_id, 0)
            progress.verdicts += len(mine)
            progress.states[outcome.state] = progress.states.get(outcome.state, 0) + 1
            units.append([v for _, v in mine])
            if len(mine) == 2:
                pair = pairs.setdefault((mine[0][0], mine[1][0]), ([], []))
                pair[0].append(mine[0][1])
                pair[1].append(mine[1][1])
            if outcome.state == "disagreement":
                todo.append({"item_id": item_id, "batch": batch.name, "votes": mine})
        progress.alpha = krippendorff_alpha(units)
        progress.kappa = mean_kappa(pairs) if batch.overlap == 2 else None
        out.append(progress)
    return out, todo


def annotator_stats(session: Session) -> list[AnnotatorStats]:
    """Throughput and agreement with the outcome, per account that has assignments."""
    votes = _votes(session)
    overlap = dict(
        session.execute(select(store.Item.id, store.Batch.overlap).join(store.Batch)).all()
    )
    outcome = {i: decide([v for _, v in vs], overlap[i]).preferred for i, vs in votes.items()}
    stats = []
    for user in session.scalars(select(store.User).order_by(store.User.name)):
        row = AnnotatorStats(user.name, user.note)
        row.assigned = session.scalar(
            select(func.count()).where(store.Assignment.user_id == user.id)
        )
        mine = session.execute(
            select(store.Verdict.item_id, store.Verdict.preferred, store.Verdict.seconds).where(
                store.Verdict.user_id == user.id
            )
        ).all()
        if not row.assigned and not mine:
            continue
        row.done = len(mine)
        seconds = [s for _, _, s in mine]
        if seconds:
            row.median_seconds = statistics.median(seconds)
            row.per_hour = 3600.0 * len(seconds) / sum(seconds) if sum(seconds) else None
        judged = [(p, outcome.get(i)) for i, p, _ in mine if outcome.get(i)]
        if judged:
            row.agreement = sum(p == o for p, o in judged) / len(judged)
        stats.append(row)
    return stats
