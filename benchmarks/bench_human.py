"""Load benchmark of the human verification app: simulated annotators labelling as a browser does.

The real server (``synpref annotate-ui``, one uvicorn process, SQLite in WAL mode) runs in a
subprocess on 127.0.0.1; N simulated annotators (asyncio + httpx in this process, each with its
own login session) loop for a bounded time: GET the item page (HTML), POST the verdict form
with the session's CSRF token, follow the 303 to the next open item. Afterwards the store is
checked against what the server acknowledged: every acknowledged verdict stored once (zero lost),
no (item, annotator) twice (zero duplicated), no other row.

    .venv/bin/python -m benchmarks.bench_human                  # 20 annotators, 120 s (make bench)
    .venv/bin/python -m benchmarks.bench_human --seconds 15     # quick check

The pairs are SYNTHETIC (``benchmarks/synth.py``: real prompts and responses from ``data/`` with
appended words), ingested by the real pipeline and drawn into one batch with overlap 2.
Results: a Markdown table on stdout and ``benchmarks/results/human.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from benchmarks import synth
from benchmarks.common import OtherLoad, machine, rusage_cpu_s, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "human.json"
PASSWORD = "benchmark password 1"
VERDICTS = ("first", "second", "undecidable")
NEXT_ITEM = re.compile(r'id="start" href="/items/(\d+)"')


def prepare(root: Path, pairs: int, annotators: int, overlap: int) -> tuple[str, dict]:
    """A store with the accounts and one batch of ``pairs`` synthetic pairs; (URL, timings)."""
    from synpref_core.config import IngestConfig, SourceSpec
    from synpref_core.human import auth, store
    from synpref_core.human.batches import BatchConfig, create_batch
    from synpref_core.ingest.pipeline import run_ingest

    data = synth.ensure(pairs)
    started = time.perf_counter()
    config = IngestConfig(
        sources=[SourceSpec(format="pairs", paths=[str(data.pairs)])], out=str(root / "pairs")
    )
    stage = run_ingest(config, progress=False).rsplit("/", 1)[0]
    url = f"sqlite:///{root / 'human.db'}"
    engine = store.open_engine(url)
    names = [f"annotator{i:02d}" for i in range(annotators)]
    for name in names:
        auth.create_user(engine, name, "annotator", PASSWORD, note="simulated (benchmark)")
    ready = time.perf_counter()
    batch = create_batch(
        engine, BatchConfig(pairs=stage, name="load", size=pairs, overlap=overlap, annotators=names)
    )
    engine.dispose()
    timings = {
        "ingest_and_accounts_s": ready - started,
        "create_batch_s": time.perf_counter() - ready,
        "items": batch.items,
        "assignments": batch.assignments,
    }
    return url, timings


def start_server(url: str, port: int, log: Path) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "synpref_core.cli",
        "annotate-ui",
        "--db",
        url,
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/login", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)


async def annotate(base: str, name: str, until: float, seed: int) -> dict[str, Any]:
    """One simulated annotator: log in, then page → verdict → next page until ``until``."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {"page": [], "verdict": []}
    acked, errors = [], []
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await client.get("/login")
        await client.post(
            "/login",
            data={
                "username": name,
                "password": PASSWORD,
                "csrf_token": client.cookies.get("synpref_login_csrf"),
            },
        )
        csrf = (await client.get("/api/me")).json()["csrf_token"]
        found = NEXT_ITEM.search((await client.get("/")).text)
        item = found.group(1) if found else None
        while item and time.monotonic() < until:
            started = time.perf_counter()
            page = await client.get(f"/items/{item}")
            samples["page"].append(time.perf_counter() - started)
            if page.status_code != 200:
                errors.append(f"GET item {item}: {page.status_code}")
                break
            form = {
                "verdict": rng.choice(VERDICTS),
                "confidence": str(rng.randint(1, 5)),
                "seconds": f"{rng.uniform(5, 90):.1f}",
                "rationale": "simulated",
                "csrf_token": csrf,
            }
            started = time.perf_counter()
            sent = await client.post(f"/items/{item}/verdict", data=form)
            samples["verdict"].append(time.perf_counter() - started)
            if sent.status_code != 303:
                errors.append(f"POST item {item}: {sent.status_code}")
                break
            acked.append(int(item))
            location = sent.headers["location"]
            item = location.rsplit("/", 1)[1] if location.startswith("/items/") else None
    return {
        "name": name,
        "samples": samples,
        "acked": acked,
        "errors": errors,
        "ran_out": item is None,
    }


async def load(base: str, names: list[str], seconds: float) -> list[dict[str, Any]]:
    until = time.monotonic() + seconds
    return await asyncio.gather(*(annotate(base, n, until, i) for i, n in enumerate(names)))


def check_store(url: str, runs: list[dict[str, Any]]) -> dict[str, int]:
    """Acknowledged verdicts against stored rows: lost, duplicated, unexpected."""
    from sqlalchemy import select

    from synpref_core.human import store

    engine = store.open_engine(url)
    with store.reading(engine) as session:
        rows = session.execute(
            select(store.Verdict.item_id, store.User.name).join(
                store.User, store.User.id == store.Verdict.user_id
            )
        ).all()
    engine.dispose()
    stored = [(item, name) for item, name in rows]
    acked = {(item, r["name"]) for r in runs for item in r["acked"]}
    return {
        "acknowledged": sum(len(r["acked"]) for r in runs),
        "stored": len(stored),
        "lost": len(acked - set(stored)),
        "duplicated": len(stored) - len(set(stored)),
        "unexpected": len(set(stored) - acked),
    }


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def summarize(runs: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    pages = [v for r in runs for v in r["samples"]["page"]]
    posts = [v for r in runs for v in r["samples"]["verdict"]]
    both = pages + posts
    return {
        "wall_s": wall,
        "requests": len(both),
        "requests_per_s": len(both) / wall,
        "verdicts_per_s": len(posts) / wall,
        "latency_ms": {
            kind: {"p50": _ms(v, 50), "p99": _ms(v, 99), "n": len(v)}
            for kind, v in (("item page", pages), ("verdict post", posts), ("all", both))
        },
        "errors": [e for r in runs for e in r["errors"]],
        "annotators_out_of_items": sum(r["ran_out"] for r in runs),
    }


def table(result: dict[str, Any]) -> str:
    lines = ["| request | n | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
    for kind, lat in result["latency_ms"].items():
        lines.append(f"| {kind} | {lat['n']:,} | {lat['p50']:.1f} | {lat['p99']:.1f} |")
    check = result["check"]
    lines += [
        "",
        f"{result['annotators']} annotators for {result['wall_s']:.0f} s: "
        f"{result['requests_per_s']:.1f} requests/s, {result['verdicts_per_s']:.1f} verdicts/s; "
        f"{check['acknowledged']:,} verdicts acknowledged, {check['stored']:,} stored, "
        f"{check['lost']} lost, {check['duplicated']} duplicated, {len(result['errors'])} errors.",
        f"Server CPU {1000 * result['server_cpu_s'] / max(result['requests'], 1):.1f} ms per "
        f"request ({result['server_cpu_s'] / result['wall_s']:.2f} cores); the simulated "
        f"annotators {result['clients_cpu_s'] / result['wall_s']:.2f} cores; other processes "
        f"{result['other_load_cores']:.2f} cores of the machine's {os.cpu_count()}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="load duration")
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=12_000, help="synthetic pairs in the batch")
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="synpref-bench-human-") as scratch:
        root = Path(scratch)
        url, setup = prepare(root, args.pairs, args.annotators, args.overlap)
        server = start_server(url, args.port, root / "server.log")
        names = [f"annotator{i:02d}" for i in range(args.annotators)]
        try:
            server_cpu = psutil.Process(server.pid)
            with OtherLoad() as other:
                cpu_before, own_before = sum(server_cpu.cpu_times()[:2]), rusage_cpu_s()
                started = time.perf_counter()
                runs = asyncio.run(load(f"http://127.0.0.1:{args.port}", names, args.seconds))
                wall = time.perf_counter() - started
                cpu = {
                    "server_cpu_s": sum(server_cpu.cpu_times()[:2]) - cpu_before,
                    "clients_cpu_s": rusage_cpu_s() - own_before,
                }
        finally:
            server.terminate()
            server.wait(timeout=30)
        result = {
            **summarize(runs, wall),
            "annotators": args.annotators,
            "overlap": args.overlap,
            "setup": setup,
            "check": check_store(url, runs),
            "other_load_cores": other.mean,
            **cpu,
            "machine": machine("fastapi", "sqlalchemy", "uvicorn"),
        }
    write_results(args.json, result)
    print(table(result))
    print(f"\n(results: {args.json})")
    if result["check"]["lost"] or result["check"]["duplicated"] or result["errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    main()
