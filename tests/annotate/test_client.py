"""The judge client against a real local OpenAI-compatible server that injects faults: what is
transient is retried, what is not is a per-record error with its reason, counts reconcile, a
cached re-run sends nothing, keys never reach disk, a down endpoint fails in one line."""

from __future__ import annotations

import pytest

from synpref_core.annotate.client import (
    ChatRequest,
    ClientConfig,
    EndpointConfig,
    EndpointDownError,
    check_endpoints,
    complete_all_sync,
)
from synpref_core.config import ConfigError
from tests.annotate_servers import FaultServer, free_port


@pytest.fixture
def server():
    with FaultServer() as srv:
        yield srv


def config(base_url: str, cache_dir, **endpoint) -> ClientConfig:
    fields = {"timeout_s": 0.5, "max_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    judge = EndpointConfig(name="judge", base_url=base_url, model="judge-test", **fields | endpoint)
    return ClientConfig(endpoints=[judge], cache_dir=str(cache_dir), seed=7)


def ask(message: str, sample: int = 0) -> ChatRequest:
    return ChatRequest(
        endpoint="judge",
        messages=[{"role": "system", "content": "judge"}, {"role": "user", "content": message}],
        template_version="v1",
        sample=sample,
    )


def test_transient_errors_are_retried_then_succeed(server, tmp_path):
    messages = ["script:429,500,ok", "script:503,hang,ok", "script:429,429,502,ok"]
    results, usage = complete_all_sync(config(server.base_url, tmp_path), list(map(ask, messages)))
    assert [r.text for r in results] == [f"echo:{m}" for m in messages]
    assert [r.attempts for r in results] == [3, 3, 4]
    assert [len(server.arrivals[m]) for m in messages] == [3, 3, 4]
    assert usage.endpoints["judge"].attempts == server.requests == 10


def test_retry_after_is_honoured(server, tmp_path):
    message = "script:429ra1,ok"
    (result,), _ = complete_all_sync(config(server.base_url, tmp_path), [ask(message)])
    first, second = server.arrivals[message]
    assert result.text == f"echo:{message}" and result.attempts == 2
    assert second - first >= 0.9  # Retry-After: 1, while our own backoff would be ≤ 0.05 s


def test_retry_after_over_the_maximum_is_an_error(server, tmp_path):
    cfg = config(server.base_url, tmp_path, retry_after_max_s=2)
    (result,), _ = complete_all_sync(cfg, [ask("script:429ra3600,ok")])
    assert (result.error, result.attempts) == ("http_429", 1)
    assert "Retry-After 3600 s is over the maximum" in result.reason


def test_retries_exhausted_give_the_last_error(server, tmp_path):
    results, _ = complete_all_sync(
        config(server.base_url, tmp_path, max_retries=2), [ask("script:500"), ask("script:hang")]
    )
    assert [(r.error, r.attempts) for r in results] == [("http_500", 3), ("timeout", 3)]
    assert "injected 500" in results[0].reason and results[1].reason
    assert len(server.arrivals["script:500"]) == len(server.arrivals["script:hang"]) == 3


def test_refused_connection_is_retried_as_a_connection_error(tmp_path):
    down = f"http://127.0.0.1:{free_port()}/v1"
    (result,), _ = complete_all_sync(config(down, tmp_path, max_retries=2), [ask("hello")])
    assert (result.error, result.attempts) == ("connection", 3)
    assert "ConnectionRefusedError" in result.reason


def test_non_transient_errors_are_per_record_errors(server, tmp_path):
    codes = {
        "script:400": "http_400",
        "script:401": "http_401",
        "script:404": "http_404",
        "script:422": "http_422",
        "script:malformed": "malformed",
        "script:empty": "empty_choice",
    }
    requests = [ask(m) for m in codes]
    results, usage = complete_all_sync(config(server.base_url, tmp_path), requests)
    assert [r.error for r in results] == list(codes.values())
    assert all(r.reason and r.text is None and r.attempts == 1 for r in results)
    assert "injected 422" in results[3].reason and "body" in results[4].reason
    assert all(len(server.arrivals[m]) == 1 for m in codes)  # never retried
    assert dict(usage.endpoints["judge"].errors) == {code: 1 for code in codes.values()}


def test_counts_reconcile(server, tmp_path):
    messages = ["a b c", "script:400", "script:500,ok", "script:malformed", "d e", "script:hang"]
    requests = [ask(m, sample) for m in messages for sample in range(2)]
    results, usage = complete_all_sync(config(server.base_url, tmp_path, max_retries=1), requests)
    use = usage.endpoints["judge"]
    ok = [r for r in results if r.ok]
    assert len(results) == len(requests) == use.requests == 12
    assert len(ok) + sum(use.errors.values()) == 12 and len(ok) == 6
    assert use.attempts == server.requests == sum(r.attempts for r in results)
    assert use.input_tokens == sum(r.input_tokens for r in ok) == 2 * (3 + 1 + 2)
    metrics = usage.as_metrics()
    assert metrics["annotate.judge.requests"] == 12 and metrics["annotate.judge.errors"] == 6


def test_cached_rerun_sends_no_request(server, tmp_path):
    cfg = config(server.base_url, tmp_path / "cache")
    requests = [ask(f"pair {i}", sample) for i in range(5) for sample in range(2)]
    first, _ = complete_all_sync(cfg, [*requests, ask("script:400")])
    sent = server.requests
    again, usage = complete_all_sync(cfg, requests)
    assert server.requests == sent  # zero requests
    assert [r.text for r in again] == [r.text for r in first[:-1]]
    assert all(r.cached and r.cost == 0 and r.attempts == 0 for r in again)
    assert usage.endpoints["judge"].cached == 10
    entry = next((tmp_path / "cache").rglob("*.json"))
    entry.write_text('{"answer": "not ours"}')  # a foreign entry is a miss, not a crash
    complete_all_sync(cfg, requests)
    assert server.requests == sent + 1
    sent += 1
    complete_all_sync(cfg, [ask("script:400"), ask("pair 0", sample=2)])
    assert server.requests == sent + 2  # errors are not cached; a new sample is a new request


def test_cost_is_accounted_from_config_prices(server, tmp_path):
    cfg = config(server.base_url, tmp_path, price_per_1k_input=2.0, price_per_1k_output=10.0)
    results, usage = complete_all_sync(cfg, [ask("one two three four"), ask("five")])
    assert [(r.input_tokens, r.output_tokens) for r in results] == [(4, 3), (1, 3)]
    assert usage.endpoints["judge"].cost == pytest.approx((5 * 2.0 + 6 * 10.0) / 1000)


def test_keys_are_never_written(server, tmp_path, monkeypatch, caplog):
    secret = "sk-test-9f8e7d6c5b4a"
    monkeypatch.setenv("SYNPREF_TEST_JUDGE_KEY", secret)
    cfg = config(server.base_url, tmp_path / "cache", api_key_env="SYNPREF_TEST_JUDGE_KEY")
    caplog.set_level("DEBUG")
    results, usage = complete_all_sync(cfg, [ask("hello"), ask("script:401")])
    assert server.auth == {f"Bearer {secret}"}  # the key was used...
    files = list((tmp_path / "cache").rglob("*"))
    assert any(f.suffix == ".json" for f in files)
    for path in files:  # ...and is nowhere on disk, in the logs or in the metrics
        assert not path.is_file() or secret not in path.read_text()
    assert secret not in caplog.text and secret not in str(results) + str(usage.as_metrics())


def test_missing_key_variable_fails_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNPREF_TEST_UNSET_KEY", raising=False)
    cfg = config("http://127.0.0.1:9/v1", tmp_path, api_key_env="SYNPREF_TEST_UNSET_KEY")
    with pytest.raises(ConfigError, match="SYNPREF_TEST_UNSET_KEY is not set"):
        complete_all_sync(cfg, [ask("hello")])


def test_endpoint_down_fails_with_one_line_naming_url(server, tmp_path):
    check_endpoints(config(server.base_url, tmp_path))  # up: passes
    down = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointDownError) as info:
        check_endpoints(config(down, tmp_path))
    message = str(info.value)
    assert f"{down}/models" in message and "\n" not in message and "'judge' is down" in message
    assert "ConnectionRefusedError" in message


def test_unknown_endpoint_is_refused(tmp_path):
    cfg = config("http://127.0.0.1:9/v1", tmp_path)
    request = ask("x").model_copy(update={"endpoint": "nope"})
    with pytest.raises(ValueError, match="unknown endpoints"):
        complete_all_sync(cfg, [request])


def test_identical_requests_in_flight_are_sent_once(server, tmp_path):
    requests = [ask("script:sleep100")] * 3 + [ask("script:400")] * 2
    results, usage = complete_all_sync(config(server.base_url, tmp_path), requests)
    assert len(server.arrivals["script:sleep100"]) == len(server.arrivals["script:400"]) == 1
    assert [r.text for r in results[:3]] == ["echo:script:sleep100"] * 3
    assert [(r.cached, r.attempts) for r in results[:3]] == [(False, 1), (True, 0), (True, 0)]
    assert [(r.error, r.attempts) for r in results[3:]] == [("http_400", 1), ("http_400", 0)]
    assert usage.endpoints["judge"].requests == 5 and usage.endpoints["judge"].attempts == 2


def test_usage_is_logged_to_mlflow(server, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from synpref_core.annotate.client import log_usage
    from synpref_core.config import TrackingConfig
    from synpref_core.tracking import start_run

    secret = "sk-test-mlflow-1a2b3c"
    monkeypatch.setenv("SYNPREF_TEST_JUDGE_KEY", secret)
    cfg = config(server.base_url, tmp_path / "cache", api_key_env="SYNPREF_TEST_JUDGE_KEY")
    _, usage = complete_all_sync(cfg, [ask("one two"), ask("script:400")])
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="a")
    before = mlflow.get_tracking_uri()
    try:
        with start_run(tracking, "annotate-test") as run:
            log_usage(usage)
    finally:
        mlflow.set_tracking_uri(before)
    metrics = MlflowClient(tracking_uri=tracking.tracking_uri).get_run(run.info.run_id).data.metrics
    assert metrics["annotate.judge.requests"] == 2 and metrics["annotate.judge.input_tokens"] == 2
    assert metrics["annotate.judge.errors.http_400"] == 1
    assert not any(secret in path.read_bytes().decode("latin-1") for path in tmp_path.rglob("*.db"))


def test_endpoints_are_accounted_apart_and_order_is_kept(server, tmp_path):
    judges = [
        EndpointConfig(name=name, base_url=server.base_url, model=f"judge-{name}", timeout_s=5)
        for name in ("a", "b")
    ]
    cfg = ClientConfig(endpoints=judges, cache_dir=str(tmp_path))
    messages = ["script:sleep300", "script:sleep150", "script:sleep10"]
    requests = [
        ChatRequest(endpoint=name, messages=[{"role": "user", "content": m}], template_version="v1")
        for name in ("a", "b")
        for m in messages
    ]
    results, usage = complete_all_sync(cfg, requests)
    assert [r.text for r in results] == [f"echo:{m}" for m in messages] * 2  # request order
    assert server.requests == 6  # same messages, other model: other cache keys
    assert {name: use.requests for name, use in usage.endpoints.items()} == {"a": 3, "b": 3}
