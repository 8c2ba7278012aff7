"""A real OpenAI-compatible HTTP server that injects faults, for the chat client's tests.

FastAPI + uvicorn in a background thread on 127.0.0.1 (a free port). ``GET /v1/models`` lists
one model; ``POST /v1/chat/completions`` behaves as the last user message scripts it:
``"script:429,500,ok"`` answers the first request carrying that message with a 429, the second
with a 500 and every later one with an answer (the last step repeats). Steps:

- ``ok``: 200, text ``echo:<message>``, usage (words of the message, 3)
- ``429`` / ``429ra<s>``: 429, without / with ``Retry-After: <s>``
- ``500``, ``400``, ``401``, ``404``, ``422``: that status with an OpenAI-style error body
- ``hang``: sleeps ``HANG_S`` (past the client's timeout), then answers
- ``malformed``: 200 with a body that is not JSON; ``empty``: 200 with no choices
- ``sleep<ms>``: answers after ``<ms>`` milliseconds

Any other message is ``ok``; ``FaultServer(answer=fn)`` answers an ``ok`` step with
``fn(messages)`` instead of the echo (a scripted judge; an int is answered as that HTTP
error status). The server counts requests, records each message's arrival times
(monotonic clock), the Authorization headers it saw, and the peak number in flight.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

HANG_S = 3.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def completion(text: str, prompt_tokens: int, choices: bool = True) -> dict:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "stop",
    }
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "judge-test",
        "choices": [choice] if choices else [],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 3,
            "total_tokens": prompt_tokens + 3,
        },
    }


def error(status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": f"injected {status}", "type": "test", "code": str(status)}}
    return JSONResponse(body, status_code=status, headers=headers)


async def hang(request: Request) -> None:
    """Wait ``HANG_S`` or until the client gives up (so shutting down never waits on it)."""
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline and not await request.is_disconnected():
        await asyncio.sleep(0.05)


class FaultServer:
    """The server and what it observed; use as a context manager."""

    def __init__(self, answer: Callable[[list[dict]], str | int] | None = None) -> None:
        self.answer = answer
        self.port = free_port()
        self.requests = 0
        self.in_flight = 0
        self.peak = 0
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self.auth: set[str] = set()
        self.app = FastAPI()
        self.app.get("/v1/models")(self.models)
        self.app.post("/v1/chat/completions")(self.chat)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        config.timeout_graceful_shutdown = 1
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": "judge-test", "object": "model"}]}

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        message = body["messages"][-1]["content"]
        self.requests += 1
        self.arrivals[message].append(time.monotonic())
        self.auth.add(request.headers.get("authorization", ""))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await self.respond(
                request, body["messages"], message, len(self.arrivals[message]) - 1
            )
        finally:
            self.in_flight -= 1

    async def respond(
        self, request: Request, messages: list[dict], message: str, attempt: int
    ) -> Response:
        steps = message.removeprefix("script:").split(",") if message.startswith("script:") else []
        step = steps[min(attempt, len(steps) - 1)] if steps else "ok"
        if step.startswith("429ra"):
            return error(429, {"Retry-After": step.removeprefix("429ra")})
        if step.isdigit():
            return error(int(step))
        if step == "malformed":
            return PlainTextResponse(
                '{"id": "chatcmpl-x", "choices": [', media_type="application/json"
            )
        if step == "hang":
            await hang(request)
        elif step.startswith("sleep"):
            await asyncio.sleep(int(step.removeprefix("sleep")) / 1000)
        words = len(message.split())
        text = self.answer(messages) if self.answer and not steps else f"echo:{message}"
        if isinstance(text, int):
            return error(text)
        return JSONResponse(completion(text, words, choices=step != "empty"))

    def __enter__(self) -> FaultServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("fault server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
