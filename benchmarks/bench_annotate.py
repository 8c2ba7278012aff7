"""Annotation client benchmark: fan-out of the judge client (``synpref_core.annotate.client``)
against a local OpenAI-compatible endpoint that answers every chat completion after a fixed
latency (200 ms), at concurrency C = 8, 32, 128.

Per C, in a fresh process (so peak RSS is that C's): a warm-up of C requests (connections
opened), then ``rounds × C`` distinct requests through ``ChatClient.complete_all`` with
``max_concurrency = C`` and no rate limits; achieved requests/s against the ideal C / latency
(target ≥ 0.9 at every C); then the same requests again with a new client on the same cache
(target: zero requests reach the server; the seconds are reported). The endpoint is a minimal
ASGI app under uvicorn in its own process (so it does not share the client's core and GIL); it
counts the requests it answers and its peak in flight.

    .venv/bin/python -m benchmarks.bench_annotate            # 20 rounds per C (~1 min)
    .venv/bin/python -m benchmarks.bench_annotate --quick    # 5 rounds per C (~20 s)

Results: a Markdown table on stdout and ``benchmarks/results/annotate.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import socket
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import RESULTS, busy_cpu_s, machine, rusage_cpu_s, write_results

LATENCY_S, TARGET = 0.2, 0.9
BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Candidate 1"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43},
    }
).encode()


# -- the endpoint (its own process) -------------------------------------------------------------


def serve(port: int, latency_s: float) -> None:
    """A chat-completions endpoint answering after ``latency_s``; GET /stats: its counters."""
    import uvicorn

    stats = {"requests": 0, "in_flight": 0, "peak": 0}

    async def app(scope: dict, receive: Any, send: Any) -> None:
        more = True
        while more:  # read the whole request body
            more = (await receive()).get("more_body", False)
        body = json.dumps({**stats, "cpu_s": time.process_time()}).encode()
        if scope["path"].endswith("/chat/completions"):
            stats["requests"] += 1
            stats["in_flight"] += 1
            stats["peak"] = max(stats["peak"], stats["in_flight"])
            await asyncio.sleep(latency_s)
            stats["in_flight"] -= 1
            body = BODY
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


def start_server(latency_s: float) -> tuple[multiprocessing.Process, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = multiprocessing.get_context("spawn").Process(
        target=serve, args=(port, latency_s), daemon=True
    )
    proc.start()
    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1)
            return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("benchmark endpoint did not start")


def server_stats(base_url: str) -> dict[str, int]:
    return httpx.get(base_url.removesuffix("/v1") + "/stats", timeout=10).json()


# -- the client (a fresh process per C) ---------------------------------------------------------


def fan_out(base_url: str, concurrency: int, rounds: int, cache_dir: str) -> dict[str, Any]:
    """One C: warm-up, timed fresh run, timed cached run; the server's counts around each."""
    from synpref_core.annotate.client import ChatClient, ChatRequest, ClientConfig, EndpointConfig

    endpoint = EndpointConfig(
        name="bench", base_url=base_url, model="bench", max_concurrency=concurrency
    )
    config = ClientConfig(endpoints=[endpoint], cache_dir=cache_dir)

    def requests(version: str, n: int) -> list[ChatRequest]:
        content = "Which candidate follows the guideline better? " * 4
        messages = [{"role": "user", "content": content}]
        return [
            ChatRequest(endpoint="bench", messages=messages, template_version=version, sample=i)
            for i in range(n)
        ]

    batch = requests("timed", rounds * concurrency)

    async def run() -> dict[str, Any]:
        async with ChatClient(config) as client:
            await client.complete_all(requests("warm-up", concurrency))
            before, busy, own = server_stats(base_url), busy_cpu_s(), rusage_cpu_s()
            start = time.perf_counter()
            results = await client.complete_all(batch)
            wall, after = time.perf_counter() - start, server_stats(base_url)
            own, busy = rusage_cpu_s() - own, busy_cpu_s() - busy
        server_cpu = after["cpu_s"] - before["cpu_s"]
        async with ChatClient(config) as cached_client:
            start = time.perf_counter()
            again = await cached_client.complete_all(batch)
            cached_wall, cached_after = time.perf_counter() - start, server_stats(base_url)
        return {
            "concurrency": concurrency,
            "requests": len(batch),
            "ok": sum(r.ok for r in results),
            "wall_s": wall,
            "requests_per_s": len(batch) / wall,
            "ideal_requests_per_s": concurrency / LATENCY_S,
            "server_requests": after["requests"] - before["requests"],
            "server_peak_in_flight": after["peak"],
            "client_cpu_ms_per_request": 1000 * own / len(batch),
            "server_cpu_ms_per_request": 1000 * server_cpu / len(batch),
            "other_load_cores": max(0.0, busy - own - server_cpu) / wall,
            "cached_wall_s": cached_wall,
            "cached_server_requests": cached_after["requests"] - after["requests"],
            "cached_same_texts": [r.text for r in again] == [r.text for r in results],
        }

    out = asyncio.run(run())
    out["ratio"] = out["requests_per_s"] / out["ideal_requests_per_s"]
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--rounds", type=int, default=20, help="Requests per C: rounds × C.")
    parser.add_argument("--quick", action="store_true", help="5 rounds per C.")
    parser.add_argument("--json", type=Path, default=RESULTS / "annotate.json")
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds
    server, base_url = start_server(LATENCY_S)
    rows = []
    try:
        spawn = multiprocessing.get_context("spawn")
        for concurrency in args.concurrency:
            with (
                tempfile.TemporaryDirectory() as cache_dir,
                ProcessPoolExecutor(1, mp_context=spawn) as pool,
            ):
                rows.append(pool.submit(fan_out, base_url, concurrency, rounds, cache_dir).result())
    finally:
        server.kill()
    print_table(rows)
    info = {"machine": machine("openai", "httpx"), "latency_s": LATENCY_S, "rows": rows}
    print(f"\nwrote {write_results(args.json, info)}")


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"latency {LATENCY_S * 1000:.0f} ms; target ≥ {TARGET} of C / latency\n")
    print(
        "| C | requests | wall s | req/s | ideal | ratio | peak in flight | peak RSS MiB "
        "| client CPU ms/req | server CPU ms/req | other load (cores) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['requests']:,} | {r['wall_s']:.2f} | "
            f"{r['requests_per_s']:.0f} | {r['ideal_requests_per_s']:.0f} | {r['ratio']:.2f} | "
            f"{r['server_peak_in_flight']} | {r['peak_rss_mib']:.0f} | "
            f"{r['client_cpu_ms_per_request']:.2f} | {r['server_cpu_ms_per_request']:.2f} | "
            f"{r['other_load_cores']:.1f} |"
        )
    print("\n| C | cached run s | requests sent | same texts |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['cached_wall_s']:.2f} | {r['cached_server_requests']} | "
            f"{r['cached_same_texts']} |"
        )


if __name__ == "__main__":
    main()
