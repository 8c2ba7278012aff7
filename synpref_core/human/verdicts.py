"""Recording verdicts, attribute edits and adjudications, and deciding an item from them.

An annotator records one verdict per assigned item (first / second / undecidable as the page
showed them); it is kept in stored order too (``preferred``: chosen / rejected / undecidable).
An item is decided when all its ``overlap`` annotators have answered and one answer has a strict
majority, or when an admin adjudicated it; a complete item without a majority is a disagreement
to adjudicate. Every change writes an audit entry in the same transaction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from synpref_core.human import store
from synpref_core.human.store import Adjudication, Assignment, AttributeEdit, Item, Verdict
from synpref_core.schema import ATTRIBUTE_NAMES

PREFERENCES = ("chosen", "rejected", "undecidable")
MAX_TEXT = 20_000  # characters of a rationale or an edited attribute
MAX_SECONDS = 86_400.0


class NotAssignedError(store.StoreError):
    """The item does not exist or is not assigned to this user (the app answers 404)."""


def preferred_of(verdict: str, swapped: bool) -> str:
    """The stored-order preference of a verdict given as the page showed the sides."""
    if verdict == "undecidable":
        return "undecidable"
    first_is_chosen = not swapped
    return "chosen" if (verdict == "first") == first_is_chosen else "rejected"


@dataclass(frozen=True)
class Outcome:
    preferred: str | None  # chosen / rejected / undecidable; None while pending
    state: str  # pending / disagreement / decided / adjudicated
    votes: tuple[str, ...]


def decide(votes: list[str], overlap: int, adjudicated: str | None = None) -> Outcome:
    """An item's outcome from its stored-order votes (pure)."""
    if adjudicated is not None:
        return Outcome(adjudicated, "adjudicated", tuple(votes))
    if len(votes) < overlap:
        return Outcome(None, "pending", tuple(votes))
    label, count = Counter(votes).most_common(1)[0]
    if 2 * count > len(votes):
        return Outcome(label, "decided", tuple(votes))
    return Outcome(None, "disagreement", tuple(votes))


def assigned_item(session: Session, item_id: int, user_id: int) -> tuple[Item, Assignment]:
    found = session.execute(
        select(Item, Assignment)
        .join(Assignment, Assignment.item_id == Item.id)
        .where(Item.id == item_id, Assignment.user_id == user_id)
        .options(defer(Item.pair))  # the texts are not needed to record or edit
    ).first()
    if found is None:
        raise NotAssignedError(f"item {item_id} is not assigned to you")
    return found.tuple()


def record_verdict(
    session: Session,
    item_id: int,
    user_id: int,
    verdict: str,
    confidence: int,
    tools: list[str],
    rationale: str,
    seconds: float,
    client: str = "",
) -> Verdict:
    """Store one annotator's verdict; never replaces an existing one."""
    _check_verdict(verdict, confidence, tools, rationale)
    item, _ = assigned_item(session, item_id, user_id)
    if session.scalar(
        select(Verdict.id).where(Verdict.item_id == item_id, Verdict.user_id == user_id)
    ):
        raise store.VerdictExistsError(f"you already recorded a verdict on item {item_id}")
    row = Verdict(
        item_id=item_id,
        user_id=user_id,
        verdict=verdict,
        preferred=preferred_of(verdict, item.swapped),
        confidence=confidence,
        tools=sorted(set(tools)),
        rationale=rationale,
        seconds=min(max(seconds, 0.0), MAX_SECONDS),
    )
    session.add(row)
    try:
        session.flush()  # the unique constraint is the last word on a race
    except IntegrityError as exc:
        raise store.VerdictExistsError(f"you already recorded a verdict on item {item_id}") from exc
    store.audit(
        session,
        user_id,
        "verdict",
        f"item:{item_id}",
        {"verdict": verdict, "preferred": row.preferred, "confidence": confidence},
        client,
    )
    return row


def _check_verdict(verdict: str, confidence: int, tools: list[str], rationale: str) -> None:
    if verdict not in store.VERDICTS:
        raise store.StoreError(f"verdict must be one of {', '.join(store.VERDICTS)}")
    if not 1 <= confidence <= 5:
        raise store.StoreError("confidence must be 1 to 5")
    if unknown := sorted(set(tools) - set(store.TOOLS)):
        raise store.StoreError(f"unknown tools {unknown}; choose from {', '.join(store.TOOLS)}")
    if len(rationale) > MAX_TEXT:
        raise store.StoreError(f"rationale longer than {MAX_TEXT} characters")


def edit_attribute(
    session: Session, item_id: int, user_id: int, name: str, value: str, client: str = ""
) -> AttributeEdit:
    """Change one attribute of an assigned item, recording who, when and the old value."""
    if name not in ATTRIBUTE_NAMES:
        raise store.StoreError(f"unknown attribute {name!r}")
    if len(value) > MAX_TEXT:
        raise store.StoreError(f"attribute value longer than {MAX_TEXT} characters")
    item, _ = assigned_item(session, item_id, user_id)
    old = item.attributes.get(name)
    edit = AttributeEdit(
        item_id=item_id, user_id=user_id, name=name, old_value=old, new_value=value
    )
    session.add(edit)
    item.attributes = {**item.attributes, name: value}  # a new dict: JSON columns track by value
    store.audit(
        session,
        user_id,
        "edit_attribute",
        f"item:{item_id}",
        {"name": name, "old": old, "new": value},
        client,
    )
    return edit


def item_votes(session: Session, item_id: int) -> list[str]:
    return list(session.scalars(select(Verdict.preferred).where(Verdict.item_id == item_id)))


def adjudicate(
    session: Session, item_id: int, admin_id: int, preferred: str, note: str, client: str = ""
) -> Adjudication:
    """An admin's final word on a disagreement; once per item."""
    if preferred not in PREFERENCES:
        raise store.StoreError(f"decision must be one of {', '.join(PREFERENCES)}")
    item = session.get(Item, item_id)
    if item is None:
        raise NotAssignedError(f"no item {item_id}")
    if session.scalar(select(Adjudication.id).where(Adjudication.item_id == item_id)):
        raise store.VerdictExistsError(f"item {item_id} is already adjudicated")
    overlap = session.get(store.Batch, item.batch_id).overlap
    if decide(item_votes(session, item_id), overlap).state != "disagreement":
        raise store.StoreError(f"item {item_id} is not a disagreement to adjudicate")
    row = Adjudication(item_id=item_id, user_id=admin_id, preferred=preferred, note=note[:MAX_TEXT])
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:
        raise store.VerdictExistsError(f"item {item_id} is already adjudicated") from exc
    store.audit(
        session,
        admin_id,
        "adjudicate",
        f"item:{item_id}",
        {"preferred": preferred, "note": row.note},
        client,
    )
    return row
