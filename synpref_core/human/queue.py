"""An annotator's queue: their assigned items in (batch, protocol position) order, the item
before and after one, its place in the queue, and the next item still open.

Each is one indexed query that reads ids and counts, never the pair texts of the whole queue, so
an item page costs the same with 20 items assigned or 20,000.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, Select, and_, case, func, or_, select
from sqlalchemy.orm import Session

from synpref_core.human.store import Assignment, Batch, Item, Verdict


def _mine(user_id: int, *columns: Any) -> Select:
    return (
        select(*columns)
        .select_from(Item)
        .join(Assignment, Assignment.item_id == Item.id)
        .where(Assignment.user_id == user_id)
    )


def _before(item: Item | Row) -> Any:
    return or_(
        Item.batch_id < item.batch_id,
        and_(Item.batch_id == item.batch_id, Item.position < item.position),
    )


def _after(item: Item | Row) -> Any:
    return or_(
        Item.batch_id > item.batch_id,
        and_(Item.batch_id == item.batch_id, Item.position > item.position),
    )


def assigned(session: Session, user_id: int, item_id: int) -> tuple[Item, str, Verdict | None]:
    """The item, its batch's name and the user's verdict; None when not assigned to them."""
    row = session.execute(
        _mine(user_id, Item, Batch.name, Verdict)
        .join(Batch, Batch.id == Item.batch_id)
        .outerjoin(Verdict, and_(Verdict.item_id == Item.id, Verdict.user_id == user_id))
        .where(Item.id == item_id)
    ).first()
    return row.tuple() if row else None


def neighbours(session: Session, user_id: int, item: Item) -> dict[str, int | None]:
    """Ids of the previous and next items, the item's place (1-based) and the queue's length."""
    previous = session.scalar(
        _mine(user_id, Item.id)
        .where(_before(item))
        .order_by(Item.batch_id.desc(), Item.position.desc())
        .limit(1)
    )
    following = session.scalar(
        _mine(user_id, Item.id).where(_after(item)).order_by(Item.batch_id, Item.position).limit(1)
    )
    before, total = session.execute(
        _mine(user_id, func.count(case((_before(item), 1))), func.count())
    ).one()
    return {"previous": previous, "next": following, "index": before + 1, "total": total}


def place(session: Session, user_id: int, item_id: int) -> Row | None:
    """(batch_id, position) of an item assigned to the user; None when it is not."""
    return session.execute(
        _mine(user_id, Item.batch_id, Item.position).where(Item.id == item_id)
    ).first()


def next_open(session: Session, user_id: int, after: Item | Row | None = None) -> int | None:
    """The first item without the user's verdict after ``after`` (wrapping round), if any."""
    query = (
        _mine(user_id, Item.id)
        .outerjoin(Verdict, and_(Verdict.item_id == Item.id, Verdict.user_id == user_id))
        .where(Verdict.id.is_(None))
        .order_by(Item.batch_id, Item.position)
        .limit(1)
    )
    found = session.scalar(query.where(_after(after))) if after is not None else None
    return found if found is not None else session.scalar(query)
