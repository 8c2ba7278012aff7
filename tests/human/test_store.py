"""The store's own guarantees, below the app: WAL mode, and one verdict per (item, annotator)
enforced by the database itself."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from synpref_core.human import store, verdicts


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(db_url):
    engine = store.open_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == store.BUSY_TIMEOUT_MS
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_the_database_refuses_a_second_verdict_by_the_same_annotator(db_url):
    engine = store.open_engine(db_url)
    with store.reading(engine) as session:
        item_id, user_id = session.execute(
            select(store.Assignment.item_id, store.Assignment.user_id).limit(1)
        ).one()
    with store.writing(engine) as session:
        verdicts.record_verdict(session, item_id, user_id, "first", 3, [], "", 1.0)
    with pytest.raises(store.VerdictExistsError), store.writing(engine) as session:
        verdicts.record_verdict(session, item_id, user_id, "second", 3, [], "", 1.0)
    raw = {
        "item_id": item_id,
        "user_id": user_id,
        "verdict": "second",
        "preferred": "chosen",
        "confidence": 1,
        "tools": [],
        "rationale": "",
        "seconds": 0.0,
    }
    with pytest.raises(IntegrityError), store.writing(engine) as session:
        session.add(store.Verdict(**raw))  # past the app's check: the constraint still holds
    with store.reading(engine) as session:
        assert session.scalars(select(store.Verdict.verdict)).all() == ["first"]


def test_sessions_expire_and_expired_ones_are_removed(db_url):
    from datetime import timedelta

    from synpref_core.human import auth

    engine = store.open_engine(db_url)
    with store.writing(engine) as session:
        old, _ = auth.open_session(session, 1, timedelta(seconds=-1))  # already expired
    with store.reading(engine) as session:
        assert auth.find_session(session, old) is None
    with store.writing(engine) as session:
        new, _ = auth.open_session(session, 1, timedelta(hours=1))
    with store.reading(engine) as session:
        assert auth.find_session(session, new) is not None
        assert len(session.scalars(select(store.LoginSession)).all()) == 1
