"""The verification app served in-process for a while: uvicorn in a background thread on a free
loopback port, for a round that replays recorded labels through the app's HTTP API.

    with serve_app("sqlite:///.synpref/human.db") as base_url:
        replay(base_url, "hh-rlhf", paths, credentials)

People use ``synpref annotate-ui`` instead (a long-lived server on a fixed port).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from synpref_core.human.app import create_app
from synpref_core.human.web import AppSettings

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class ServeError(RuntimeError):
    """The app did not start or did not stop in time."""


@contextmanager
def serve_app(db_url: str) -> Iterator[str]:
    """Serve the app on ``db_url`` at ``http://127.0.0.1:<free port>``; yields that base URL
    once the app answers, and stops the server (open connections closed) on exit."""
    app = create_app(AppSettings(db_url=db_url))
    # port 0: the OS picks a free port, read back from the bound socket (no race with others)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="synpref-human-app", daemon=True)
    thread.start()
    try:
        yield _wait_until_answering(server, thread)
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT_S)
        app.state.human.engine.dispose()
    if thread.is_alive():  # reached only when the body raised nothing (that error comes first)
        raise ServeError(f"the app did not stop within {STOP_TIMEOUT_S:.0f} s")


def _wait_until_answering(server: uvicorn.Server, thread: threading.Thread) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise ServeError("the app's server exited before it started (see the log above)")
        if time.monotonic() > deadline:
            raise ServeError(f"the app did not start within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    response = httpx.get(f"{url}/login", timeout=START_TIMEOUT_S)
    if response.status_code != 200:
        raise ServeError(f"{url}/login answered HTTP {response.status_code}")
    return url
