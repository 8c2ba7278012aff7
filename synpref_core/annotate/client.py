"""The judges' chat client: the official ``openai`` AsyncOpenAI against any OpenAI-compatible
endpoint (a local vLLM or judge server, or a hosted API), with the limits a long annotation run
needs (DESIGN §2 step 3):

- per endpoint, at most ``max_concurrency`` requests in flight, and token buckets for requests
  and tokens per minute (a bucket holds one second's worth, so bursts stay small);
- retries with exponential backoff and seeded jitter only for 429, 5xx, connection errors and
  timeouts, waiting what ``Retry-After`` says when the server says it; anything else (400, 401,
  404, 422, a malformed body, an empty choice) is a per-record error result with a code and a
  reason, never dropped: ``complete_all`` returns one result per request, in order;
- a content-addressed disk cache (``cache.py``) consulted before any request, so a re-run or a
  resumed run never pays for a request twice (errors are not cached: a re-run retries them),
  and identical requests in flight at once are sent once;
- token and cost accounting per endpoint (prices from config), as MLflow metrics.

Endpoints, models and the *names* of the environment variables holding keys come from config;
keys are read from the environment when the client opens and are never logged or written.
Each request asks for one choice; self-consistency samples are separate requests told apart by
``sample`` (so each is its own cache entry).

    results, usage = complete_all_sync(ClientConfig(...), [ChatRequest(...), ...])
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx2  # openai's HTTP library (pinned in requirements.lock)
import openai
import orjson
import pydantic
from pydantic import Field, model_validator

from synpref_core.annotate.cache import RequestCache, cache_key
from synpref_core.annotate.limits import TokenBucket, backoff_s, retry_after_s
from synpref_core.config import ConfigError, StrictModel

log = logging.getLogger(__name__)

DUMMY_KEY = "EMPTY"  # local servers (vLLM, our judge server) accept any key
REASON_CHARS = 300  # of a server's error message kept in a result
PROBE_TIMEOUT_S = 10.0  # GET /models at start: a live server answers in well under a second


class EndpointConfig(StrictModel):
    """One OpenAI-compatible endpoint serving one judge model."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Short name used in requests.")
    base_url: str = Field(description="API root including /v1, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(min_length=1, description="Model name sent with each request.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the key; None: a dummy key."
    )
    max_concurrency: int = Field(16, ge=1, description="Requests in flight at most.")
    requests_per_minute: float | None = Field(None, gt=0, description="None: unlimited.")
    tokens_per_minute: float | None = Field(
        None, gt=0, description="Estimated prompt + max_tokens per minute; None: unlimited."
    )
    timeout_s: float = Field(120.0, gt=0, description="Per attempt.")
    max_retries: int = Field(6, ge=0, description="Retries of a transient failure.")
    backoff_base_s: float = Field(1.0, gt=0, description="First backoff; doubles per retry.")
    backoff_max_s: float = Field(60.0, gt=0, description="Longest backoff (Retry-After aside).")
    retry_after_max_s: float = Field(
        600.0, ge=0, description="A longer Retry-After (a spent daily quota) is an error."
    )
    price_per_1k_input: float = Field(0.0, ge=0, description="Currency per 1,000 prompt tokens.")
    price_per_1k_output: float = Field(0.0, ge=0, description="Per 1,000 completion tokens.")


class ClientConfig(StrictModel):
    """The judge endpoints, where finished responses are cached, and the jitter seed."""

    endpoints: list[EndpointConfig] = Field(min_length=1)
    cache_dir: str = Field(description="Directory of the request cache (content-addressed).")
    seed: int = Field(0, description="Seeds the backoff jitter, so re-runs wait alike.")

    @model_validator(mode="after")
    def _unique_names(self) -> ClientConfig:
        names = [e.name for e in self.endpoints]
        if len(names) != len(set(names)):
            raise ValueError(f"endpoint names must be unique (got {names})")
        return self


class ChatRequest(StrictModel):
    """One chat completion to ask for: one choice."""

    endpoint: str
    messages: list[dict[str, str]] = Field(min_length=1, description="role/content dicts.")
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    template_version: str = Field(description="Version of the prompt template (cache key).")
    sample: int = Field(0, ge=0, description="Index of the self-consistency sample (cache key).")
    seed: int | None = Field(
        None,
        description="Sent as the request's sampling seed (vLLM, OpenAI and the local judge "
        "honour it): one per sample, so samples differ and a re-run asks the same.",
    )


class ChatResult(StrictModel):
    """A request's outcome: ``text``, or ``error`` (a code) and ``reason``."""

    text: str | None = None
    error: str | None = None
    reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = Field(0.0, description="Paid in this run: 0 for a cached answer.")
    cached: bool = False
    attempts: int = Field(0, description="HTTP requests sent for this result.")

    @property
    def ok(self) -> bool:
        return self.error is None


class EndpointDownError(RuntimeError):
    """An endpoint cannot be reached (or rejects the key) at start; the message names its URL."""


@dataclass
class EndpointUsage:
    """What one endpoint did in a run."""

    requests: int = 0  # results, cached or not
    cached: int = 0
    attempts: int = 0  # HTTP requests sent
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, result: ChatResult) -> None:
        self.requests += 1
        self.cached += result.cached
        self.attempts += result.attempts
        self.input_tokens += result.input_tokens
        self.output_tokens += result.output_tokens
        self.cost += result.cost
        if result.error:
            self.errors[result.error] += 1


@dataclass
class Usage:
    """Per-endpoint usage of a run; ``as_metrics`` is what MLflow logs."""

    endpoints: dict[str, EndpointUsage] = field(default_factory=dict)

    def add(self, endpoint: str, result: ChatResult) -> None:
        self.endpoints.setdefault(endpoint, EndpointUsage()).add(result)

    def as_metrics(self, prefix: str = "annotate.") -> dict[str, float]:
        out: dict[str, float] = {}
        for name, use in sorted(self.endpoints.items()):
            for key in ("requests", "cached", "attempts", "input_tokens", "output_tokens", "cost"):
                out[f"{prefix}{name}.{key}"] = float(getattr(use, key))
            out[f"{prefix}{name}.errors"] = float(sum(use.errors.values()))
            for code, count in sorted(use.errors.items()):
                out[f"{prefix}{name}.errors.{code}"] = float(count)
        return out


def log_usage(usage: Usage) -> None:
    """Log ``usage`` as metrics of the active MLflow run."""
    import mlflow

    mlflow.log_metrics(usage.as_metrics())


class _Failure(Exception):
    def __init__(self, code: str, reason: str, transient: bool, retry_after: float | None = None):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason
        self.transient, self.retry_after = transient, retry_after


def root_cause(exc: BaseException) -> BaseException:
    """The innermost ``__cause__``: the SDK's aiohttp transport reports a refused connection
    as a connect *timeout*, whose cause chain still holds the ``ConnectionRefusedError``."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def describe(exc: BaseException) -> str:
    """``Type: message`` of the root cause, on one line."""
    root = root_cause(exc)
    return f"{type(root).__name__}: {root}".replace("\n", " ")[:REASON_CHARS]


def classify(exc: openai.APIError) -> _Failure:
    """An openai error as a failure: transient (retry) only for 429, 5xx, connection, timeout."""
    if isinstance(exc, openai.APIConnectionError):
        root = root_cause(exc)
        timed_out = isinstance(root, TimeoutError) or root is exc
        return _Failure("timeout" if timed_out else "connection", describe(exc), transient=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        transient = status == 429 or status >= 500
        wait = retry_after_s(exc.response.headers) if transient else None
        return _Failure(f"http_{status}", exc.message[:REASON_CHARS], transient, wait)
    return _Failure("api_error", str(exc)[:REASON_CHARS], transient=False)


def request_key(config: EndpointConfig, request: ChatRequest) -> str:
    """The cache key: what the answer depends on (model, sampling, template, messages, sample)."""
    fields = request.model_dump(exclude={"endpoint"})
    return cache_key({"model": config.model, **fields})


def api_key(config: EndpointConfig) -> str:
    if config.api_key_env is None:
        return DUMMY_KEY
    value = os.environ.get(config.api_key_env)
    if not value:
        raise ConfigError(
            f"endpoint {config.name!r}: environment variable {config.api_key_env} is not set"
        )
    return value


def open_client(config: EndpointConfig, timeout_s: float | None = None) -> openai.AsyncOpenAI:
    """AsyncOpenAI for ``config``, with the SDK's own retries off (ours are above it).

    Transport: the SDK's aiohttp one, which costs about half the CPU per request of its httpx
    default (benchmarks/README.md, "Annotation client"), with one kept-alive connection per
    slot (the SDK keeps 100 alive: above that, every round would reconnect).
    """
    timeout = timeout_s or config.timeout_s
    slots = config.max_concurrency
    limits = httpx2.Limits(max_connections=slots, max_keepalive_connections=slots)
    return openai.AsyncOpenAI(
        base_url=config.base_url,
        api_key=api_key(config),
        timeout=timeout,
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(limits=limits, timeout=timeout),
    )


@dataclass
class _Endpoint:
    config: EndpointConfig
    client: openai.AsyncOpenAI
    slots: asyncio.Semaphore
    requests: TokenBucket | None
    tokens: TokenBucket | None

    @classmethod
    def open(cls, config: EndpointConfig) -> _Endpoint:
        rpm, tpm = config.requests_per_minute, config.tokens_per_minute
        return cls(
            config,
            open_client(config),
            asyncio.Semaphore(config.max_concurrency),
            TokenBucket(rpm) if rpm else None,
            TokenBucket(tpm) if tpm else None,
        )


def cached_result(entry: dict[str, Any] | None) -> ChatResult | None:
    """A cache entry as a result (nothing paid, no request sent); an entry that is not one of
    ours (edited by hand, another version) is a miss."""
    if entry is None:
        return None
    try:
        return ChatResult(cached=True, **entry)
    except (TypeError, pydantic.ValidationError):
        return None


def estimate_tokens(request: ChatRequest) -> int:
    """Tokens a request may use, for the tokens-per-minute bucket: ~4 characters a token in
    the prompt, plus the full ``max_tokens``."""
    return sum(len(m.get("content", "")) for m in request.messages) // 4 + request.max_tokens


class _QuietGc:
    """Keeps the cyclic garbage collector off the request path while any ``ChatClient`` is open,
    and puts it back as it was when the last one closes.

    Each request allocates many container objects (most freed at once by reference counting),
    so with the default thresholds a young collection ran every ~8 requests, and a full one
    every ~900, walking the whole heap: ~80 ms with the SDK imported, a stall of every request
    in flight. Together 0.17 ms of CPU per request at 128 in flight, a tenth of the client's
    (0.01 ms with this; benchmarks/README.md, "Annotation client"). So, while open:

    - what the process held before the first client opened (the SDK's modules and models, the
      caller's data) sits in the permanent generation (``gc.freeze``; ``gc.unfreeze`` after);
      frozen objects are still freed by reference counting, and cyclic garbage among them
      waits for the unfreeze. Left alone when something else froze objects already;
    - the youngest generation is collected every ``YOUNG_THRESHOLD`` net allocations instead of
      700 (the older generations' thresholds are kept).
    """

    YOUNG_THRESHOLD = 10_000
    _lock = threading.Lock()
    _holders = 0
    _froze = False
    _thresholds: tuple[int, int, int] | None = None

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            if cls._holders == 0:
                cls._froze = gc.get_freeze_count() == 0
                if cls._froze:
                    gc.freeze()
                cls._thresholds = young, *older = gc.get_threshold()
                if 0 < young < cls.YOUNG_THRESHOLD:  # 0: collection is off, leave it so
                    gc.set_threshold(cls.YOUNG_THRESHOLD, *older)
            cls._holders += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._holders -= 1
            if cls._holders == 0:
                if cls._thresholds is not None:
                    gc.set_threshold(*cls._thresholds)
                    cls._thresholds = None
                if cls._froze:
                    gc.unfreeze()
                    cls._froze = False


class ChatClient:
    """Sends ``ChatRequest``s within each endpoint's limits; ``usage`` accumulates over calls.

    Use as ``async with ChatClient(config) as client: results = await client.complete_all(...)``.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.cache = RequestCache(config.cache_dir)
        self.usage = Usage()
        self._endpoints: dict[str, _Endpoint] = {}
        self._pending: dict[str, asyncio.Future[ChatResult]] = {}

    async def __aenter__(self) -> ChatClient:
        self._endpoints = {e.name: _Endpoint.open(e) for e in self.config.endpoints}
        _QuietGc.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            for endpoint in self._endpoints.values():
                await endpoint.client.close()
        finally:
            _QuietGc.release()
        for name, use in sorted(self.usage.endpoints.items()):
            log.info(
                "endpoint %s: %d results (%d cached), %d requests sent, %d+%d tokens, "
                "cost %.4f, errors %s",
                *(name, use.requests, use.cached, use.attempts, use.input_tokens),
                *(use.output_tokens, use.cost, dict(use.errors)),
            )

    async def complete_all(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """One result per request, in order: an answer (maybe cached) or an error with reason."""
        unknown = sorted({r.endpoint for r in requests} - set(self._endpoints))
        if unknown:
            raise ValueError(f"requests name unknown endpoints {unknown}")
        return list(await asyncio.gather(*(self.complete(r) for r in requests)))

    async def complete(self, request: ChatRequest) -> ChatResult:
        endpoint = self._endpoints[request.endpoint]
        key = request_key(endpoint.config, request)
        hit = cached_result(self.cache.get(key))
        if hit is not None:
            result = hit
        elif key in self._pending:  # the same request is in flight: share its outcome
            first = await asyncio.shield(self._pending[key])
            result = first.model_copy(update={"cached": first.ok, "cost": 0.0, "attempts": 0})
        else:
            self._pending[key] = pending = asyncio.get_running_loop().create_future()
            try:
                result = await self._fetch(endpoint, request, key)
                pending.set_result(result)
            finally:
                del self._pending[key]
                pending.cancel()  # a no-op once set; wakes any duplicate if we were cancelled
        self.usage.add(request.endpoint, result)
        return result

    async def _fetch(self, endpoint: _Endpoint, request: ChatRequest, key: str) -> ChatResult:
        config = endpoint.config
        rng: random.Random | None = None  # made at the first backoff: most requests never retry
        for attempt in range(1, config.max_retries + 2):
            try:
                text, tokens_in, tokens_out = await self._attempt(endpoint, request)
            except _Failure as failure:
                wait = failure.retry_after
                if wait is not None and wait > config.retry_after_max_s:
                    reason = f"{failure.reason} (Retry-After {wait:.0f} s is over the maximum)"
                    return ChatResult(error=failure.code, reason=reason, attempts=attempt)
                if not failure.transient or attempt > config.max_retries:
                    return ChatResult(error=failure.code, reason=failure.reason, attempts=attempt)
                if wait is None:
                    rng = rng or random.Random(f"{self.config.seed}:{key}")  # re-runs wait alike
                    wait = backoff_s(config.backoff_base_s, config.backoff_max_s, attempt, rng)
                await asyncio.sleep(wait)  # the slot is free meanwhile
                continue
            entry = {"text": text, "input_tokens": tokens_in, "output_tokens": tokens_out}
            self.cache.put(key, entry)
            cost = (
                tokens_in * config.price_per_1k_input + tokens_out * config.price_per_1k_output
            ) / 1000
            return ChatResult(**entry, cost=cost, attempts=attempt)
        raise AssertionError("unreachable: the last attempt returns")

    async def _attempt(self, endpoint: _Endpoint, request: ChatRequest) -> tuple[str, int, int]:
        """One HTTP request within the endpoint's limits; raises ``_Failure``."""
        async with endpoint.slots:  # buckets inside the slot: queued requests never burst out
            if endpoint.requests:
                await endpoint.requests.take()
            if endpoint.tokens:
                await endpoint.tokens.take(estimate_tokens(request))
            try:
                response = await endpoint.client.post(
                    "/chat/completions",
                    body=chat_body(endpoint.config, request),
                    cast_to=httpx2.Response,
                    options={"security": {"bearer_auth": True}},  # as ``chat.completions.create``
                )
            except openai.APIError as exc:
                raise classify(exc) from exc
            return parse_completion(response.content)


def chat_body(config: EndpointConfig, request: ChatRequest) -> dict[str, Any]:
    """The JSON body of a chat completion: what ``chat.completions.create`` would send for these
    arguments. Sent through the SDK's ``post`` as is: ``create`` would first run the SDK's
    recursive type-directed transform over it (a quarter of the client's CPU per request, and a
    no-op for plain role/content messages)."""
    body: dict[str, Any] = {
        "model": config.model,
        "messages": request.messages,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
    }
    if request.seed is not None:
        body["seed"] = request.seed
    return body


def parse_completion(body: bytes) -> tuple[str, int, int]:
    """(text, prompt tokens, completion tokens) of a 200 response's body, decoded once with
    orjson and checked where it is read (the SDK's model of the whole completion is not built).
    A body that is not a chat completion (not JSON, no ``choices``, a field of the wrong type)
    is ``malformed``; one without text (no choice, no message, empty content) is
    ``empty_choice``; both are non-transient failures."""
    try:
        completion = orjson.loads(body)
        if not isinstance(completion, dict):
            raise TypeError(f"the body is a JSON {type(completion).__name__}, not an object")
        choices = completion["choices"]
        message = _choice_message(choices)
        text = None if message is None else message.get("content")
        if text is not None and not isinstance(text, str):
            raise TypeError(f"message content is a {type(text).__name__}, not a string")
        tokens = _usage_tokens(completion.get("usage"))
    except (ValueError, TypeError, KeyError) as exc:
        shown = body.decode("utf-8", "replace")[:100]
        raise _Failure("malformed", f"{type(exc).__name__}: body {shown!r}", False) from exc
    if not text:
        raise _Failure("empty_choice", f"no text in {len(choices or [])} choices", False)
    return text, *tokens


def _choice_message(choices: Any) -> dict[str, Any] | None:
    """The first choice's message; None for no choice or no message."""
    if choices is None:
        return None
    if not isinstance(choices, list):
        raise TypeError(f"choices is a {type(choices).__name__}, not a list")
    if not choices:
        return None
    if not isinstance(choices[0], dict):
        raise TypeError(f"a choice is a {type(choices[0]).__name__}, not an object")
    message = choices[0].get("message")
    if message is not None and not isinstance(message, dict):
        raise TypeError(f"the message is a {type(message).__name__}, not an object")
    return message


def _usage_tokens(usage: Any) -> tuple[int, int]:
    """(prompt, completion) tokens of a completion's ``usage``; (0, 0) without one."""
    if usage is None:
        return 0, 0
    if not isinstance(usage, dict):
        raise TypeError(f"usage is a {type(usage).__name__}, not an object")
    tokens = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    if not all(type(t) is int and t >= 0 for t in tokens):
        raise TypeError(f"usage tokens {tokens} are not counts")
    return tokens


def complete_all_sync(
    config: ClientConfig, requests: list[ChatRequest]
) -> tuple[list[ChatResult], Usage]:
    """``ChatClient.complete_all`` for synchronous stage code (runs its own event loop)."""

    async def run() -> tuple[list[ChatResult], Usage]:
        async with ChatClient(config) as client:
            return await client.complete_all(requests), client.usage

    return asyncio.run(run())


async def _probe(config: EndpointConfig) -> None:
    url = f"{config.base_url.rstrip('/')}/models"
    client = open_client(config, timeout_s=min(config.timeout_s, PROBE_TIMEOUT_S))
    try:
        await client.models.list()
    except openai.APIConnectionError as exc:
        raise EndpointDownError(
            f"endpoint {config.name!r} is down: {url}: {describe(exc)}"
        ) from None
    except openai.APIStatusError as exc:
        if exc.status_code in (401, 403):
            raise EndpointDownError(
                f"endpoint {config.name!r} rejected the key from "
                f"{config.api_key_env or 'the dummy key'} (HTTP {exc.status_code}): {url}"
            ) from None
        # other statuses: the server is up (some OpenAI-compatible servers lack /models)
    finally:
        await client.close()


def check_endpoints(config: ClientConfig) -> None:
    """Fail fast, with one line naming the URL, when an endpoint is down at start."""

    async def run() -> None:
        await asyncio.gather(*(_probe(e) for e in config.endpoints))

    asyncio.run(run())
