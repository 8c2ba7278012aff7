"""Accounts and sessions: argon2id password hashes, server-side sessions, CSRF tokens and a
login rate limiter.

The session cookie holds 32 random bytes; the database keeps only their SHA-256, so a copy of
the database opens no session. Each session has its own CSRF token, which every state-changing
request must echo (form field ``csrf_token`` or header ``X-CSRF-Token``). Failed logins are
limited per account and per client address (5 in 5 minutes by default); the limiter lives in
the app's process, which is enough for the one-process server ``synpref annotate-ui`` runs.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine, Row
from sqlalchemy.orm import Session

from synpref_core.human import store

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_PASSWORD = 10
MAX_TRACKED_KEYS = 10_000  # the limiter's memory stays bounded whatever names are tried
_hasher = PasswordHasher()  # argon2id, the library's RFC 9106 low-memory profile
_DUMMY_HASH = _hasher.hash("not a password of anyone")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def create_user(engine: Engine, name: str, role: str, password: str, note: str = "") -> int:
    """A new account; its id. Names are ``[A-Za-z0-9_.-]``, passwords at least 10 characters."""
    if not NAME_PATTERN.fullmatch(name):
        raise store.StoreError(f"user name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    if role not in store.ROLES:
        raise store.StoreError(f"role {role!r}: choose one of {', '.join(store.ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise store.StoreError(f"password shorter than {MIN_PASSWORD} characters")
    with store.writing(engine) as session:
        if session.scalar(select(store.User.id).where(store.User.name == name)):
            raise store.StoreError(f"user {name!r} exists")
        user = store.User(name=name, role=role, password_hash=hash_password(password), note=note)
        session.add(user)
        session.flush()
        store.audit(session, None, "create_user", f"user:{name}", {"role": role, "note": note})
        return user.id


def authenticate(session: Session, name: str, password: str) -> store.User | None:
    user = session.scalar(select(store.User).where(store.User.name == name))
    if user is None:
        verify_password(_DUMMY_HASH, password)  # same work either way: no user enumeration
        return None
    return user if verify_password(user.password_hash, password) else None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(session: Session, user_id: int, ttl: timedelta) -> tuple[str, str]:
    """A new login session; (cookie token, CSRF token). Expired sessions are removed."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = store.utcnow()
    session.execute(delete(store.LoginSession).where(store.LoginSession.expires_at <= now))
    session.add(
        store.LoginSession(
            token_hash=token_hash(token),
            user_id=user_id,
            csrf=csrf,
            created_at=now,
            expires_at=now + ttl,
        )
    )
    return token, csrf


def find_session(session: Session, token: str | None) -> Row | None:
    """The live session of ``token`` as (user_id, name, role, csrf); None if none or expired."""
    if not token:
        return None
    found = session.execute(
        select(store.User.id, store.User.name, store.User.role, store.LoginSession.csrf)
        .join(store.LoginSession, store.LoginSession.user_id == store.User.id)
        .where(
            store.LoginSession.token_hash == token_hash(token),
            store.LoginSession.expires_at > store.utcnow(),
        )
    ).first()
    return found


def close_session(session: Session, token: str) -> None:
    session.execute(
        delete(store.LoginSession).where(store.LoginSession.token_hash == token_hash(token))
    )


def same_token(expected: str | None, given: str | None) -> bool:
    return bool(expected and given) and secrets.compare_digest(expected, given)


class LoginLimiter:
    """At most ``failures`` failed logins per key (account, client) in ``window_s`` seconds."""

    def __init__(
        self,
        failures: int = 5,
        window_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.failures, self.window_s, self.clock = failures, window_s, clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, keys: list[str]) -> int:
        """Seconds until a login may be tried again under ``keys``; 0 when it may now."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._seen.get(key, deque())
                while times and times[0] <= now - self.window_s:
                    times.popleft()
                if len(times) >= self.failures:
                    wait = max(wait, times[0] + self.window_s - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, keys: list[str]) -> None:
        now = self.clock()
        with self._lock:
            if len(self._seen) > MAX_TRACKED_KEYS:  # forget keys whose failures have all aged out
                self._seen = {
                    k: t for k, t in self._seen.items() if t and t[-1] > now - self.window_s
                }
            for key in keys:
                self._seen.setdefault(key, deque()).append(now)
