"""Ingest benchmark: synpref's pipeline against a naive pandas + Python-loop baseline.

Both do the same work on the same SYNTHETIC file (``benchmarks/synth.py``: pairs generated from
the real sets in ``data/``): read, validate (empty side, identical sides), decontaminate (drop a
pair whose prompt shares a 13-word n-gram with a benchmark prompt), exact dedup, write the kept
rows to Parquet. Every measurement runs in its own subprocess; the parent samples the summed RSS
of that subprocess and all its descendants (synpref's spawn pool workers included) every 0.1 s.

    .venv/bin/python -m benchmarks.bench_ingest                  # 100k and 1M (make bench)
    .venv/bin/python -m benchmarks.bench_ingest --sizes 20000    # quick check

Results: a Markdown table on stdout and ``benchmarks/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks import synth
from benchmarks.common import busy_cpu_s, machine, rusage_cpu_s, write_results

RESULTS = synth.RESULTS
DEFAULT_SIZES = (100_000, 1_000_000)
TARGET_PAIRS_PER_S = 10_000
TARGET_SPEEDUP = 5.0
TARGET_RSS_RATIO = 1.5
RSS_INTERVAL_S = 0.1
PSS_EVERY = 5  # PSS (smaps_rollup) is dearer to read: every 5th sample, i.e. every 0.5 s
COUNT_KEYS = (
    "input_rows",
    "rows",
    "duplicates",
    "contaminated",
    "quarantined",
    "quarantined.empty_side",
    "quarantined.identical_sides",
)
MIB = 2**20


# -- the two implementations, each run inside its own child process --------------------------


def run_synpref(pairs: str, bench: str, out: str, workers: int) -> dict[str, Any]:
    """synpref's real ingest: both stages (normalise+validate+decontaminate, then dedup)."""
    from synpref_core.config import DecontamConfig, ExecutorConfig, IngestConfig, SourceSpec
    from synpref_core.ingest.pipeline import ingest_counts, run_ingest

    config = IngestConfig(
        sources=[SourceSpec(format="pairs", paths=[pairs])],
        decontamination=DecontamConfig(benchmarks=[SourceSpec(format="pairs", paths=[bench])]),
        out=out,
    )
    started = time.perf_counter()
    manifest = run_ingest(config, ExecutorConfig(kind="local", workers=workers), progress=False)
    wall = time.perf_counter() - started
    counts = ingest_counts(manifest)
    return {
        "wall_s": wall,
        "counts": {k: counts.get(k, 0) for k in COUNT_KEYS},
        "all_counts": counts,
    }


def run_naive(pairs: str, bench: str, out: str, ngram: int = 13) -> dict[str, Any]:
    """The same rules done the obvious way: pandas read-all, then one Python loop."""
    import re

    import pandas as pd

    word = re.compile(r"\w+")
    started = time.perf_counter()
    df = pd.read_json(pairs, lines=True, dtype=False)
    bench_df = pd.read_json(bench, lines=True, dtype=False)
    grams: set[tuple[str, ...]] = set()
    for prompt in bench_df["prompt"]:
        words = word.findall(prompt.lower())
        for i in range(len(words) - ngram + 1):
            grams.add(tuple(words[i : i + ngram]))
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["input_rows"] = len(df)
    seen: set[tuple[str, str, str]] = set()
    keep: list[int] = []
    max_chars = 200_000
    for index, (prompt, chosen, rejected) in enumerate(
        zip(df["prompt"], df["chosen"], df["rejected"], strict=True)
    ):
        # validation, in synpref's order: types, empty prompt, empty side, identical, oversize
        if not all(isinstance(v, str) for v in (prompt, chosen, rejected)):
            reason = "wrong_type"
        elif not prompt.strip():
            reason = "empty_prompt"
        elif not chosen.strip() or not rejected.strip():
            reason = "empty_side"
        elif chosen.strip() == rejected.strip():
            reason = "identical_sides"
        elif max(len(prompt), len(chosen), len(rejected)) > max_chars:
            reason = "oversize_field"
        else:
            reason = None
        if reason is not None:
            counts["quarantined"] += 1
            counts[f"quarantined.{reason}"] = counts.get(f"quarantined.{reason}", 0) + 1
            continue
        words = word.findall(prompt.lower())
        if any(tuple(words[i : i + ngram]) in grams for i in range(len(words) - ngram + 1)):
            counts["contaminated"] += 1
            continue
        key = (prompt, chosen, rejected)
        if key in seen:
            counts["duplicates"] += 1
            continue
        seen.add(key)
        keep.append(index)
    counts["rows"] = len(keep)
    df.iloc[keep].to_parquet(os.path.join(out, "kept.parquet"), index=False)
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "counts": {k: counts.get(k, 0) for k in COUNT_KEYS},
        "all_counts": counts,
    }


def child_main(args: argparse.Namespace) -> None:
    import_started = time.perf_counter()
    if args.child == "synpref":
        import synpref_core.ingest.pipeline  # noqa: F401  (import cost kept out of the timing)
    else:
        import pandas  # noqa: F401
    import_s = time.perf_counter() - import_started
    out = tempfile.mkdtemp(prefix=f"{args.child}-", dir=args.tmp)
    try:
        if args.child == "synpref":
            result = run_synpref(args.input, args.bench, out, args.workers)
        else:
            result = run_naive(args.input, args.bench, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    result["import_s"] = import_s
    # ru_maxrss is KiB on Linux. RUSAGE_CHILDREN: the largest of this process's waited-for
    # children (the pool workers), not their sum.
    result["maxrss_self_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["maxrss_children_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    Path(args.result).write_text(json.dumps(result))


# -- the parent: run each measurement in a subprocess and watch its memory ----------------------


class _TreeWatch:
    """Samples a process and all its descendants: summed RSS (and PSS), and CPU per process."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak_rss = self.peak_pss = self.peak_procs = self.samples = 0
        self.cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> last CPU seconds

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        with_pss = self.samples % PSS_EVERY == 0
        rss = pss = 0
        for p in procs:
            try:
                with p.oneshot():
                    times = p.cpu_times()
                    self.cpu[(p.pid, p.create_time())] = times.user + times.system
                    if with_pss:
                        info = p.memory_full_info()
                        rss, pss = rss + info.rss, pss + info.pss
                    else:
                        rss += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self.peak_rss = max(self.peak_rss, rss)
        if with_pss:
            self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(procs))
        self.samples += 1

    def cpu_s(self) -> float:
        """CPU seconds of every process seen, as of its last sample (misses < 0.1 s each)."""
        return sum(self.cpu.values())


def measure(kind: str, data: synth.SynthData, workers: int, tmp: Path) -> dict[str, Any]:
    """Run one implementation on one file in a fresh subprocess; time it and watch its memory."""
    result_file = tmp / f"result-{kind}-{data.meta['n']}.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_ingest",
        "--child",
        kind,
        "--input",
        str(data.pairs),
        "--bench",
        str(data.bench),
        "--workers",
        str(workers),
        "--result",
        str(result_file),
        "--tmp",
        str(tmp),
    ]
    cpu_before = busy_cpu_s()
    children_before = rusage_cpu_s(resource.RUSAGE_CHILDREN)
    self_before = rusage_cpu_s(resource.RUSAGE_SELF)
    started = time.perf_counter()
    popen = subprocess.Popen(cmd, cwd=synth.REPO)
    watch = _TreeWatch(popen.pid)
    while popen.poll() is None:
        watch.sample()
        time.sleep(RSS_INTERVAL_S)
    process_s = time.perf_counter() - started
    # CPU seconds of the measured tree: waited-for descendants roll up into RUSAGE_CHILDREN; a
    # process that is reparented instead (e.g. a forkserver's workers) is only in the samples.
    tree_cpu = max(rusage_cpu_s(resource.RUSAGE_CHILDREN) - children_before, watch.cpu_s())
    watcher_cpu = rusage_cpu_s(resource.RUSAGE_SELF) - self_before
    other_cpu = max(0.0, busy_cpu_s() - cpu_before - tree_cpu - watcher_cpu)
    if popen.returncode != 0:
        raise RuntimeError(f"{kind} at n={data.meta['n']} failed with exit code {popen.returncode}")
    result = json.loads(result_file.read_text())
    result_file.unlink()
    n = data.meta["n"]
    result.update(
        impl=kind,
        n=n,
        workers=workers if kind == "synpref" else 1,
        pairs_per_s=n / result["wall_s"],
        process_s=process_s,
        peak_rss_mib=watch.peak_rss / MIB,
        peak_pss_mib=watch.peak_pss / MIB,
        peak_processes=watch.peak_procs,
        rss_samples=watch.samples,
        tree_cpu_s=tree_cpu,
        cpu_cores_used=tree_cpu / process_s,
        # Load from processes outside this benchmark while it ran, in cores: other work on a
        # shared machine slows the measurement; well above 0 means the figure is pessimistic.
        other_load_cores=other_cpu / process_s,
        expected=data.meta["expected"],
        matches_expected={
            k: result["counts"].get(k, 0) == v for k, v in data.meta["expected"].items()
        },
    )
    return result


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def report(results: dict[str, Any]) -> str:
    lines = [
        "Ingest + validate + dedup + decontaminate, SYNTHETIC pairs generated from the real sets "
        f"in data/ (benchmarks/synth.py, seed {results['seed']}); machine: "
        f"{results['machine']['cpus']} CPUs ({results['machine']['cpu']}), "
        f"{results['machine']['memory_gib']} GiB. Each figure: median wall time of "
        f"{results['repeat']} run(s), each in a fresh process; largest peak memory.",
        "",
        "| rows | implementation | input rows measured | kept | wall s | pairs/s "
        "| peak RSS MiB (tree) | peak PSS MiB (tree) | cores used | other load (cores) "
        "| counts = naive | counts = expected |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for size in results["sizes"]:
        for run in (size["synpref"], size["naive"]):
            label = (
                f"synpref (local, workers={run['workers']})"
                if run["impl"] == "synpref"
                else "naive (pandas + Python loops)"
            )
            agree = {True: "yes", False: "**no**", None: "n/a (sizes differ)"}[size["counts_agree"]]
            expected = "yes" if all(run["matches_expected"].values()) else "**no**"
            capped = " (capped by --naive-max)" if run["n"] != size["n"] else ""
            lines.append(
                f"| {_fmt(size['n'])} | {label} | {_fmt(run['n'])}{capped} "
                f"| {_fmt(run['counts']['rows'])} | {_fmt(run['wall_s'], 1)} "
                f"| {_fmt(run['pairs_per_s'])} | {_fmt(run['peak_rss_mib'])} "
                f"| {_fmt(run['peak_pss_mib'])} | {run['cpu_cores_used']:.2f} "
                f"| {run['other_load_cores']:.2f} | {agree} | {expected} |"
            )
    lines += ["", "| check | target | measured | met |", "|---|---|---|---|"]
    for check in results["checks"]:
        lines.append(
            f"| {check['name']} | {check['target']} | {check['measured']} "
            f"| {({True: 'yes', False: '**no**', None: '(for reference)'})[check['met']]} |"
        )
    return "\n".join(lines)


def checks(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for size in sizes:
        syn, naive = size["synpref"], size["naive"]
        out.append(
            {
                "name": f"synpref pairs/s at {_fmt(size['n'])}",
                "target": f">= {_fmt(TARGET_PAIRS_PER_S)}",
                "measured": _fmt(syn["pairs_per_s"]),
                "met": syn["pairs_per_s"] >= TARGET_PAIRS_PER_S,
            }
        )
        note = "" if naive["n"] == size["n"] else f" (naive measured at {_fmt(naive['n'])})"
        out.append(
            {
                "name": f"speedup synpref / naive at {_fmt(size['n'])}{note}",
                "target": f">= {TARGET_SPEEDUP:.0f}x",
                "measured": f"{size['speedup']:.2f}x",
                "met": size["speedup"] >= TARGET_SPEEDUP,
            }
        )
    by_n = {s["n"]: s for s in sizes}
    if 100_000 in by_n and 1_000_000 in by_n:
        for impl in ("synpref", "naive"):
            small, big = by_n[100_000][impl], by_n[1_000_000][impl]
            if small["n"] != 100_000 or big["n"] != 1_000_000:
                continue
            ratio = big["peak_rss_mib"] / small["peak_rss_mib"]
            out.append(
                {
                    "name": f"{impl} peak RSS 1M / 100k",
                    "target": f"<= {TARGET_RSS_RATIO}" if impl == "synpref" else "(none)",
                    "measured": f"{ratio:.2f} ({_fmt(big['peak_rss_mib'])} / "
                    f"{_fmt(small['peak_rss_mib'])} MiB)",
                    "met": ratio <= TARGET_RSS_RATIO if impl == "synpref" else None,
                }
            )
    return out


def _same_counts(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same accounting: the headline counts and every quarantine reason either one reports."""
    keys = set(COUNT_KEYS) | {
        k for run in (a, b) for k in run["all_counts"] if k.startswith("quarantined.")
    }
    return all(a["all_counts"].get(k, 0) == b["all_counts"].get(k, 0) for k in keys)


def measure_repeated(
    kind: str, data: synth.SynthData, workers: int, tmp: Path, repeat: int
) -> dict[str, Any]:
    """``repeat`` fresh runs: the one with the median wall time, with the largest peak memory."""
    runs = []
    for i in range(repeat):
        run = measure(kind, data, workers, tmp)
        runs.append(run)
        print(
            f"[n={data.meta['n']:,}] {kind} run {i + 1}/{repeat}: {run['wall_s']:.1f} s, "
            f"{run['pairs_per_s']:,.0f} pairs/s, peak RSS {run['peak_rss_mib']:,.0f} MiB, "
            f"other load {run['other_load_cores']:.2f} cores",
            file=sys.stderr,
            flush=True,
        )
    result = dict(sorted(runs, key=lambda r: r["wall_s"])[(repeat - 1) // 2])
    result.update(
        repeat=repeat,
        wall_s_runs=[r["wall_s"] for r in runs],
        peak_rss_mib=max(r["peak_rss_mib"] for r in runs),
        peak_pss_mib=max(r["peak_pss_mib"] for r in runs),
        other_load_cores=max(r["other_load_cores"] for r in runs),
    )
    if any(r["counts"] != result["counts"] for r in runs):
        raise RuntimeError(f"{kind} at n={data.meta['n']}: counts differ between repeats")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        help="numbers of synthetic pairs (default: 100000 1000000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per measurement; the table shows the median-time run and the largest "
        "peak memory over the runs (default 1)",
    )
    parser.add_argument("--workers", type=int, default=2, help="synpref local executor workers")
    parser.add_argument(
        "--naive-max",
        type=int,
        default=None,
        help="run the naive baseline on at most this many rows (its own "
        "synthetic file of that size); the table says when it applied",
    )
    parser.add_argument(
        "--json", type=Path, default=RESULTS / "ingest.json", help="where to write the results"
    )
    # internal: one measurement inside a child process
    parser.add_argument("--child", choices=("synpref", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--bench", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return

    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=RESULTS))
    sizes = []
    try:
        for n in args.sizes:
            data = synth.ensure(n, args.seed)
            naive_n = min(n, args.naive_max) if args.naive_max else n
            naive_data = data if naive_n == n else synth.ensure(naive_n, args.seed)
            print(
                f"[n={n:,}] synthetic file {data.pairs} ({data.meta['bytes'] / MIB:,.0f} MiB)",
                file=sys.stderr,
                flush=True,
            )
            syn = measure_repeated("synpref", data, args.workers, tmp, args.repeat)
            naive = measure_repeated("naive", naive_data, 1, tmp, args.repeat)
            same_n = naive["n"] == syn["n"]
            sizes.append(
                {
                    "n": n,
                    "synthetic_meta": data.meta,
                    "synpref": syn,
                    "naive": naive,
                    "speedup": syn["pairs_per_s"] / naive["pairs_per_s"],
                    # Only comparable when both ran on the same file.
                    "counts_agree": _same_counts(syn, naive) if same_n else None,
                }
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results = {
        "benchmark": "ingest",
        "data": "SYNTHETIC pairs generated from the real sets in data/ by benchmarks/synth.py",
        "seed": args.seed,
        "repeat": args.repeat,
        "machine": machine("pandas", "polars", "pyarrow"),
        "rss_method": (
            "each measurement runs in its own subprocess; the parent sums RSS over that "
            f"process and all its descendants (psutil) every {RSS_INTERVAL_S} s and keeps the "
            "maximum (PSS likewise every 0.5 s); ru_maxrss of the child (self) and of its "
            "largest waited-for child are recorded as a cross-check"
        ),
        "timing_method": "wall clock around the work inside the child (imports excluded, "
        "process-pool start-up and all file I/O included); pairs/s = input "
        "rows / wall seconds",
        "argv": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sizes": sizes,
        "checks": checks(sizes),
    }
    write_results(args.json, results)
    print(report(results))
    print(f"\nresults: {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
