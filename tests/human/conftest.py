"""Fixtures of the human verification tests: a real pair stage (hostile texts included), a real
SQLite store with accounts and a batch, the real app through TestClient or a real uvicorn server
on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from synpref_core.human import auth, store
from synpref_core.human.app import create_app
from synpref_core.human.batches import BatchConfig, create_batch
from synpref_core.human.web import LOGIN_COOKIE, AppSettings

PASSWORD = "correct horse battery staple"
SCRIPT = "<script>alert('owned')</script>"
JS_LINK = '[click me](javascript:alert(1)) <a href="javascript:alert(2)">x</a>'
ANNOTATORS = ("alice", "bob", "carol")


def hostile_rows(n: int = 12) -> list[dict[str, str]]:
    """Pairs in the ``pairs`` format; a few carry script tags and ``javascript:`` links."""
    rows = []
    for i in range(n):
        chosen, rejected = f"Answer {i}: a careful reply.", f"Answer {i}: a careless reply."
        if i % 4 == 0:
            chosen = f"{SCRIPT} reply {i}"
        if i % 4 == 1:
            rejected = f"{JS_LINK} reply {i}"
        rows.append(
            {
                "prompt": f"Question {i}: {SCRIPT if i == 2 else 'why?'}",
                "chosen": chosen,
                "rejected": rejected,
            }
        )
    return rows


@pytest.fixture(scope="module")
def hostile_pairs(tmp_path_factory) -> str:
    from synpref_core.config import IngestConfig, SourceSpec
    from synpref_core.ingest.pipeline import run_ingest

    root = tmp_path_factory.mktemp("hostile")
    source = root / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in hostile_rows()))
    config = IngestConfig(
        sources=[SourceSpec(format="pairs", paths=[str(source)])], out=str(root / "pairs")
    )
    return run_ingest(config, progress=False).rsplit("/", 1)[0]


def make_store(db: Path, pairs: str, overlap: int = 2, size: int = 12, name: str = "b1") -> str:
    """A SQLite store with annotators alice, bob, carol, an admin ``root`` and one batch."""
    url = f"sqlite:///{db}"
    engine = store.open_engine(url)
    for user in ANNOTATORS:
        auth.create_user(engine, user, "annotator", PASSWORD)
    auth.create_user(engine, "root", "admin", PASSWORD)
    create_batch(
        engine,
        BatchConfig(
            pairs=pairs, name=name, size=size, overlap=overlap, annotators=list(ANNOTATORS), seed=3
        ),
    )
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def template_db(tmp_path_factory, hostile_pairs) -> Path:
    """The store of :func:`make_store`, made once per module (argon2 hashing is slow on
    purpose); each test gets its own copy of the file."""
    db = tmp_path_factory.mktemp("template") / "human.db"
    make_store(db, hostile_pairs)
    return db


@pytest.fixture
def db_url(tmp_path, template_db) -> str:
    shutil.copyfile(template_db, tmp_path / "human.db")  # closed cleanly: no WAL file left
    return f"sqlite:///{tmp_path / 'human.db'}"


@pytest.fixture
def app(db_url):
    return create_app(AppSettings(db_url=db_url))


def login(client: httpx.Client | TestClient, name: str, password: str = PASSWORD) -> str:
    """Log in through the form like a browser; the session's CSRF token."""
    client.get("/login")
    token = client.cookies.get(LOGIN_COOKIE)
    response = client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": token},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return client.get("/api/me").json()["csrf_token"]


def items_of(client: httpx.Client | TestClient) -> list[dict[str, Any]]:
    return client.get("/api/items").json()


@pytest.fixture
def client_for(app) -> Iterator[Any]:
    """``client_for("alice")`` → a TestClient logged in as alice, with ``.csrf``."""
    opened = []

    def make(name: str) -> TestClient:
        client = TestClient(app)
        client.csrf = login(client, name)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


class LiveServer:
    """The real app under uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, settings: AppSettings):
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live(db_url) -> Iterator[LiveServer]:
    with LiveServer(AppSettings(db_url=db_url)) as server:
        yield server
