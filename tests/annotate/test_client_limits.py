"""The judge client's limits, measured on a real local server: in-flight requests never exceed
``max_concurrency``, the request bucket spaces requests out; and the pure parts (backoff,
Retry-After parsing, the cache key, reading a completion's body) directly."""

from __future__ import annotations

import email.utils
import gc
import random
import time

import pytest

from synpref_core.annotate.cache import RequestCache
from synpref_core.annotate.client import (
    ChatRequest,
    ClientConfig,
    EndpointConfig,
    _Failure,
    complete_all_sync,
    parse_completion,
    request_key,
)
from synpref_core.annotate.limits import backoff_s, retry_after_s
from tests.annotate_servers import FaultServer


def judge(base_url: str = "http://127.0.0.1:9/v1", **fields) -> EndpointConfig:
    return EndpointConfig(name="judge", base_url=base_url, model="judge-test", **fields)


def ask(message: str, sample: int = 0, **fields) -> ChatRequest:
    messages = [{"role": "user", "content": message}]
    return ChatRequest(
        endpoint="judge", messages=messages, template_version="v1", sample=sample, **fields
    )


def test_concurrency_never_exceeds_the_limit(tmp_path):
    with FaultServer() as server:
        cfg = ClientConfig(
            endpoints=[judge(server.base_url, max_concurrency=4)], cache_dir=str(tmp_path)
        )
        requests = [ask("script:sleep150", sample=i) for i in range(24)]
        results, _ = complete_all_sync(cfg, requests)
    assert all(r.ok for r in results) and server.requests == 24
    assert server.peak == 4  # measured in flight on the server


def test_request_bucket_limits_the_rate(tmp_path):
    # 240 a minute = 4 a second with a burst of 4: 16 requests need at least (16 - 4) / 4 = 3 s
    with FaultServer() as server:
        endpoint = judge(server.base_url, max_concurrency=16, requests_per_minute=240)
        cfg = ClientConfig(endpoints=[endpoint], cache_dir=str(tmp_path))
        results, _ = complete_all_sync(cfg, [ask("rate", sample=i) for i in range(16)])
    arrivals = sorted(server.arrivals["rate"])
    assert all(r.ok for r in results) and len(arrivals) == 16
    assert arrivals[-1] - arrivals[0] >= 2.9
    assert arrivals[12] - arrivals[4] >= 1.9  # steady state: 8 intervals of 0.25 s


def test_token_bucket_limits_tokens(tmp_path):
    # 1,200 tokens a minute = 20 a second (the burst); each request is estimated at
    # 1 prompt token + max_tokens 10 = 11: 6 requests need at least (6 * 11 - 20) / 20 = 2.3 s
    with FaultServer() as server:
        endpoint = judge(server.base_url, tokens_per_minute=1200)
        cfg = ClientConfig(endpoints=[endpoint], cache_dir=str(tmp_path))
        requests = [ask("abcd", sample=i, max_tokens=10) for i in range(6)]
        complete_all_sync(cfg, requests)
    arrivals = sorted(server.arrivals["abcd"])
    assert arrivals[-1] - arrivals[0] >= 2.2


def test_backoff_is_exponential_capped_and_seeded():
    waits = [backoff_s(1.0, 8.0, retry, random.Random("7:key")) for retry in range(1, 7)]
    assert waits == [backoff_s(1.0, 8.0, r, random.Random("7:key")) for r in range(1, 7)]
    for retry, wait in enumerate(waits, start=1):
        step = min(8.0, 2.0 ** (retry - 1))
        assert step / 2 <= wait <= step


def test_retry_after_headers_are_read():
    in_5s = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert 3.0 < retry_after_s({"retry-after": in_5s}) <= 5.0
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


def test_cache_key_covers_what_the_answer_depends_on(tmp_path):
    base = ask("hello")
    keys = {
        request_key(judge(), base),
        request_key(judge().model_copy(update={"model": "other"}), base),
        request_key(judge(), base.model_copy(update={"temperature": 0.7})),
        request_key(judge(), base.model_copy(update={"top_p": 0.9})),
        request_key(judge(), base.model_copy(update={"max_tokens": 8})),
        request_key(judge(), base.model_copy(update={"template_version": "v2"})),
        request_key(judge(), base.model_copy(update={"sample": 1})),
        request_key(judge(), ask("hello!")),
    }
    assert len(keys) == 8
    assert request_key(judge(), base) == request_key(judge(base_url="http://x/v1"), ask("hello"))
    cache = RequestCache(tmp_path)
    key = request_key(judge(), base)
    cache.put(key, {"text": "A", "input_tokens": 1, "output_tokens": 2})
    assert cache.get(key) == {"text": "A", "input_tokens": 1, "output_tokens": 2}
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{key}.json"]  # no tmp
    cache.path(key).write_text("{broken")
    assert cache.get(key) is None


@pytest.mark.parametrize("bad", [{"requests_per_minute": 0}, {"max_concurrency": 0}])
def test_invalid_endpoint_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        judge(**bad)


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        (b'{"choices": [{"message": {"content": "A"}}], "usage": null}', ("A", 0, 0)),
        (b'{"choices": [{"message": {"content": "A"}}]}', ("A", 0, 0)),
        (
            b'{"choices": [{"message": {"content": "B"}}], "usage": {"prompt_tokens": 4, '
            b'"completion_tokens": 2}}',
            ("B", 4, 2),
        ),
        (b'{"choices": [', "malformed"),
        (b"[]", "malformed"),
        (b"{}", "malformed"),
        (b'{"choices": "x"}', "malformed"),
        (b'{"choices": [1]}', "malformed"),
        (b'{"choices": [{"message": "A"}]}', "malformed"),
        (b'{"choices": [{"message": {"content": ["A"]}}]}', "malformed"),
        (
            b'{"choices": [{"message": {"content": "A"}}], "usage": {"prompt_tokens": "4"}}',
            "malformed",
        ),
        (b'{"choices": []}', "empty_choice"),
        (b'{"choices": null}', "empty_choice"),
        (b'{"choices": [{}]}', "empty_choice"),
        (b'{"choices": [{"message": {"content": ""}}]}', "empty_choice"),
    ],
)
def test_completion_bodies_are_checked_where_read(body, outcome):
    if isinstance(outcome, tuple):
        assert parse_completion(body) == outcome
        return
    with pytest.raises(_Failure) as info:
        parse_completion(body)
    assert info.value.code == outcome and not info.value.transient
    if outcome == "malformed":
        assert "body " + repr(body.decode()[:100]) in info.value.reason


def test_garbage_collector_settings_come_back_after_a_run(tmp_path):
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    cfg = ClientConfig(endpoints=[judge(max_retries=0, timeout_s=1)], cache_dir=str(tmp_path))
    (result,), _ = complete_all_sync(cfg, [ask("hello")])  # nothing listens on port 9
    assert result.error == "connection"
    assert (gc.get_threshold(), gc.get_freeze_count()) == (thresholds, frozen)
