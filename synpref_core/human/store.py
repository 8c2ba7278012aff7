"""The verification store: users, sessions, batches, items, assignments, verdicts, attribute
edits, adjudications and the audit log, as SQLAlchemy 2 models.

Embedded default: SQLite at ``.synpref/human.db`` in WAL mode (readers never block the writer),
with a 10 s busy timeout and ``BEGIN IMMEDIATE`` for write transactions, so concurrent
submissions queue for the write lock instead of failing on a lock upgrade (within one process
they queue on a lock first: see :func:`writing`). At scale give a
Postgres URL (``postgresql+psycopg://user@host/synpref``): the same models, and the unique
constraints below keep the guarantees on any database.

A verdict is unique per (item, annotator) in the schema itself: a second submission by the same
annotator fails with :class:`VerdictExistsError`, and nobody can write another user's verdict
because the user id comes from the session, never from the request.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from synpref_core.config import DEFAULT_HOME

DEFAULT_DB_URL = f"sqlite:///{DEFAULT_HOME / 'human.db'}"
ROLES = ("annotator", "admin")
VERDICTS = ("first", "second", "undecidable")
TOOLS = ("search", "llm")
BUSY_TIMEOUT_MS = 10_000


class StoreError(ValueError):
    """The store cannot do what was asked: named in the message."""


class VerdictExistsError(StoreError):
    """The annotator already recorded a verdict on this item; verdicts are never overwritten."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # naive UTC: SQLite keeps no zone


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    note: Mapped[str] = mapped_column(Text, default="")  # e.g. "replay of recorded labels"
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class LoginSession(Base):
    """A server-side session: the cookie holds a random token, the table only its SHA-256."""

    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class Batch(Base):
    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    source: Mapped[str] = mapped_column(Text)  # the pairs manifest it was drawn from
    seed: Mapped[int] = mapped_column(Integer)
    overlap: Mapped[int] = mapped_column(Integer)
    round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Item(Base):
    """One pair to verify. ``swapped``: the page shows the stored rejected first."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("batch_id", "pair_id"),
        Index("items_in_order", "batch_id", "position"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    pair_id: Mapped[str] = mapped_column(String(64), index=True)
    position: Mapped[int] = mapped_column(Integer)  # protocol order within the batch
    swapped: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(String(32))  # why it was selected
    pair: Mapped[dict[str, Any]] = mapped_column(JSON)  # the PAIR_SCHEMA row as stored
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)  # current values, edits applied


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    opened_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Verdict(Base):
    """``verdict`` as the annotator saw it (first/second); ``preferred`` in stored order."""

    __tablename__ = "verdicts"
    __table_args__ = (UniqueConstraint("item_id", "user_id", name="one_verdict_per_annotator"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    verdict: Mapped[str] = mapped_column(String(16))
    preferred: Mapped[str] = mapped_column(String(16))  # chosen / rejected / undecidable
    confidence: Mapped[int] = mapped_column(Integer)
    tools: Mapped[list[Any]] = mapped_column(JSON)
    rationale: Mapped[str] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)  # time on item, measured by the page
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AttributeEdit(Base):
    __tablename__ = "attribute_edits"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(32))
    old_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    new_value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Adjudication(Base):
    __tablename__ = "adjudications"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    preferred: Mapped[str] = mapped_column(String(16))  # chosen / rejected / undecidable
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AuditEntry(Base):
    """Every change, who made it and from where; never updated or deleted by the app."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    client: Mapped[str] = mapped_column(String(64), default="")


def audit(
    session: Session,
    user_id: int | None,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
    client: str = "",
) -> None:
    session.add(
        AuditEntry(
            user_id=user_id, action=action, target=target, detail=detail or {}, client=client
        )
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # the driver's own BEGIN off: see _begin
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each WAL checkpoint; safe in WAL
    cursor.close()


def _begin(conn: Any) -> None:
    # A write transaction takes the write lock at BEGIN, waiting up to the busy timeout, so a
    # read-then-write never fails on a lock upgrade under concurrent submissions.
    immediate = conn.get_execution_options().get("write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def open_engine(url: str = DEFAULT_DB_URL) -> Engine:
    """An engine on ``url`` with the tables created; SQLite gets WAL and immediate writes.
    Raises :class:`StoreError`, in one line, when the store cannot be opened."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _begin)
        Base.metadata.create_all(engine)
    except ImportError as exc:
        raise StoreError(f"{shown}: its database driver is not installed ({exc.name})") from exc
    except ArgumentError as exc:
        raise StoreError(f"{url!r} is not a database URL (e.g. sqlite:///path.db)") from exc
    except (SQLAlchemyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"{shown}: cannot open the store: {first}") from exc
    return engine


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    """A read-only session (its transaction is rolled back at the end)."""
    with Session(engine, expire_on_commit=False) as session:
        yield session


@cache
def _writer(engine: Engine) -> tuple[Engine, AbstractContextManager]:
    # SQLite has one writer at a time. Writers of this process queue on a lock instead of on
    # SQLite's busy handler, which sleeps in growing steps (up to 100 ms) and so stretches the
    # tail latency under concurrent submissions; other processes still meet the busy timeout.
    queue = threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()
    return engine.execution_options(write=True), queue


@contextmanager
def writing(engine: Engine) -> Iterator[Session]:
    """A write transaction: committed at the end of the block, rolled back on an exception."""
    writer, queue = _writer(engine)
    with queue, Session(writer, expire_on_commit=False) as session, session.begin():
        yield session
