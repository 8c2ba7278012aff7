"""Stage 2 benchmark: the consistency-filter pipeline against the bound of pure RM scoring.

Data: SYNTHETIC pairs (``benchmarks/synth.py``, made from the real sets) at N = 100k and 1M,
through the real ingest. Models: two tiny reward models (2-layer, 32-wide BERTs with random
weights over the MiniLM tokenizer: best = seed 0, gold = seed 1), so the figure measures the
pipeline, not MiniLM's forward passes. Before timing, the pairs are oriented with the best RM so
that a seeded ``--disagree`` share (default 0.2) has p_best ≤ 0.5: the share sent to the judges.

Timed, each in a fresh process (so its peak RSS is its own; ``local`` executor, 2 workers):

- **bound**: two ``ScoreStage`` runs (best and gold RM) over D_wild: r of both responses, twice;
- **pipeline**: Stage 2 without the LLM step: both scorings, ``NeedsJudgeStage``, and
  ``ConsistencyStage`` writing every pair with its outcome and evidence (the doubted pairs end
  ``not_annotated``); overhead = pipeline / bound − 1 (target ≤ 15 %);
- **llm** (``--llm-n``, default 100k only): the LLM step on the doubted pairs: attributes, then
  the judge ensemble (2 judges × 5 samples) served by the local judge server over HTTP (the two
  tiny RMs as judges), then the consistency stage with the verdicts; requests/s and seconds per
  judged pair.

Peak RSS: the largest of the timed process and its pool workers; target at 1M within 1.5× of
100k.

    .venv/bin/python -m benchmarks.bench_stage2                  # 100k and 1M (~30 min quiet)
    .venv/bin/python -m benchmarks.bench_stage2 --sizes 20000    # a quick look

Results: a Markdown table on stdout and ``benchmarks/results/stage2.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from benchmarks import synth
from benchmarks.common import RESULTS, busy_cpu_s, machine, write_results
from synpref_core.config import ExecutorConfig
from synpref_core.curation.v1select import ScoredPairsConfig, ScoredPairsStage
from synpref_core.schema import turns_pair_id

MAX_LENGTH = 64  # tokens per side: the tiny RMs' scoring length
EXECUTOR = ExecutorConfig(kind="local", workers=2)


class OrientConfig(ScoredPairsConfig):
    disagree: float = Field(0.2, ge=0, le=1, description="Share oriented to p_best ≤ 0.5.")


class OrientStage(ScoredPairsStage):
    """Swap the sides of pairs so that a seeded ``disagree`` share has p_best ≤ 0.5 (setup)."""

    name = "orient"

    def keep(self, pairs: pa.Table, scores: pa.Table) -> np.ndarray:
        raise NotImplementedError  # map_batch transforms instead of filtering

    def map_batch(self, batch: pa.RecordBatch, model: None) -> pa.Table:
        table, scores = pa.Table.from_batches([batch]), self.take_scores(batch)
        ids = table["pair_id"].to_pylist()
        doubt = np.array([hashlib.blake2b(i.encode(), digest_size=4).digest()[0] / 256
                          < self.settings.disagree for i in ids])  # fmt: skip
        swap = (scores["p"].to_numpy() > 0.5) == doubt
        mask = pa.array(swap)
        chosen = pc.if_else(mask, table["rejected"], table["chosen"])
        rejected = pc.if_else(mask, table["chosen"], table["rejected"])
        conversations = table["conversation"].to_pylist()
        for i in np.flatnonzero(swap):
            turns = [(m["role"], m["content"]) for m in conversations[i]]
            ids[i] = turns_pair_id(turns, chosen[int(i)].as_py(), rejected[int(i)].as_py())
        for name, column in (
            ("pair_id", pa.array(ids)),
            ("chosen", chosen),
            ("rejected", rejected),
        ):
            table = table.set_column(table.schema.get_field_index(name), name, column)
        return table


# -- the parts, each run in its own process --------------------------------------------------


def tiny_rm(directory: Path, seed: int) -> str:
    from tests.rm_helpers import tiny_model_dir

    return str(tiny_model_dir(directory, seed=seed))


def part_setup(root: Path, n: int, disagree: float) -> dict[str, Any]:
    from synpref_core.config import IngestConfig, SourceSpec
    from synpref_core.executors import run
    from synpref_core.ingest.pipeline import run_ingest
    from synpref_core.rm.scoring import ScoreConfig, ScoreStage

    data = synth.ensure(n)
    ingest = IngestConfig(
        sources=[SourceSpec(format="pairs", paths=[str(data.pairs)])], out=str(root / "ingest")
    )
    pairs = run_ingest(ingest, EXECUTOR, progress=False).rsplit("/", 1)[0]
    best, _ = tiny_rm(root / "best", 0), tiny_rm(root / "gold", 1)
    setup = ScoreConfig(
        model=best, pairs=pairs, out=str(root / "setup-scores"), max_length=MAX_LENGTH
    )
    scores = run(ScoreStage(setup), EXECUTOR, progress=False)
    orient = OrientConfig(pairs=pairs, scores=scores, out=str(root / "wild"), disagree=disagree)
    run(OrientStage(orient), EXECUTOR, progress=False)
    return {"wild": str(root / "wild")}


def part_bound(root: Path, tag: str) -> dict[str, Any]:
    from synpref_core.executors import run
    from synpref_core.rm.scoring import ScoreConfig, ScoreStage

    for role in ("best", "gold"):
        config = ScoreConfig(model=tiny_rm(root / role, 0 if role == "best" else 1),
                             pairs=str(root / "wild"), out=str(root / f"{tag}-{role}"),
                             max_length=MAX_LENGTH)  # fmt: skip
        run(ScoreStage(config), EXECUTOR, progress=False)
    return {}


def part_pipeline(root: Path) -> dict[str, Any]:
    from synpref_core.curation.consistency import (
        ConsistencyConfig,
        ConsistencyStage,
        NeedsJudgeStage,
        needs_judge_config,
    )
    from synpref_core.executors import run
    from synpref_core.stages import load_manifest

    part_bound(root, "pipe")
    wild, best, gold = str(root / "wild"), str(root / "pipe-best"), str(root / "pipe-gold")
    needs = run(NeedsJudgeStage(needs_judge_config(wild, best, 0.0, str(root / "needs"))),
                EXECUTOR, progress=False)  # fmt: skip
    config = ConsistencyConfig(pairs=wild, best_scores=best, gold_scores=gold,
                               out=str(root / "curated"))  # fmt: skip
    counts = load_manifest(run(ConsistencyStage(config), EXECUTOR, progress=False)).counts
    return {"doubted": load_manifest(needs).rows, "counts": counts}


def part_llm(root: Path) -> dict[str, Any]:
    from synpref_core.annotate.panel import JudgePanel
    from synpref_core.annotate.stages import (
        AttributeConfig,
        AttributeStage,
        JudgeConfig,
        JudgeStage,
    )
    from synpref_core.curation.consistency import ConsistencyConfig, ConsistencyStage
    from synpref_core.executors import run
    from synpref_core.stages import load_manifest

    panel = JudgePanel(local_models={"best": tiny_rm(root / "best", 0),
                                     "gold": tiny_rm(root / "gold", 1)},
                       cache_dir=str(root / "judge-cache"))  # fmt: skip
    drafting = AttributeConfig(pairs=str(root / "needs"), panel=panel, out=str(root / "attr"))
    attributes = run(AttributeStage(drafting), EXECUTOR, progress=False)
    judging = JudgeConfig(pairs=attributes, panel=panel, store=None, out=str(root / "judged"))
    judged = run(JudgeStage(judging), EXECUTOR, progress=False)
    config = ConsistencyConfig(pairs=str(root / "wild"), best_scores=str(root / "pipe-best"),
                               gold_scores=str(root / "pipe-gold"), judged=judged,
                               out=str(root / "curated-llm"))  # fmt: skip
    counts = load_manifest(run(ConsistencyStage(config), EXECUTOR, progress=False)).counts
    requests = (load_manifest(attributes).counts.get("requests_sent", 0)
                + load_manifest(judged).counts.get("requests_sent", 0))  # fmt: skip
    return {"judged": load_manifest(judged).rows, "requests": requests, "counts": counts}


PARTS = {"setup": part_setup, "bound": part_bound, "pipeline": part_pipeline, "llm": part_llm}


def child(part: str, root: Path, args: list[str]) -> None:
    """Run one part in this (fresh) process and print its timings and peak RSS as JSON."""
    busy, start = busy_cpu_s(), time.perf_counter()
    extra = {"setup": lambda: (int(args[0]), float(args[1])), "bound": lambda: ("bound",)}
    result = PARTS[part](root, *extra.get(part, tuple)())
    wall = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    result.update(
        wall_s=wall,
        cores_used=cpu / wall,
        other_load_cores=max(0.0, (busy_cpu_s() - busy - cpu) / wall),
        peak_rss_mib=max(own.ru_maxrss, kids.ru_maxrss) / 1024,
    )
    print(json.dumps(result))


def run_part(part: str, root: Path, *args: Any) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.bench_stage2", "--child", part, str(root),
               *map(str, args)]  # fmt: skip
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def benchmark(n: int, disagree: float, llm: bool, tmp: Path) -> dict[str, Any]:
    root = tmp / f"n{n}"
    root.mkdir(parents=True, exist_ok=True)
    print(f"N = {n:,}: setup (ingest, tiny RMs, orientation)...", file=sys.stderr)
    setup = run_part("setup", root, n, disagree)
    rows = {"setup": setup}
    for part in ("bound", "pipeline", *(("llm",) if llm else ())):
        print(f"N = {n:,}: {part}...", file=sys.stderr)
        rows[part] = run_part(part, root)
    return {"n": n, "wild_rows": rows["pipeline"]["counts"]["rows"], **rows}


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        "| N (synthetic) | part | wall s | pairs/s | × bound | peak RSS MiB | outside load |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        wild, bound = res["wild_rows"], res["bound"]["wall_s"]
        for part in ("bound", "pipeline", "llm"):
            if part not in res:
                continue
            r = res[part]
            lines.append(
                f"| {res['n']:,} | {part} | {r['wall_s']:.1f} | {wild / r['wall_s']:,.0f} | "
                f"{r['wall_s'] / bound:.2f} | {r['peak_rss_mib']:,.0f} | "
                f"{r['other_load_cores']:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--disagree", type=float, default=0.2)
    parser.add_argument("--llm-n", type=int, nargs="*", default=[100_000])
    parser.add_argument("--json", type=Path, default=RESULTS / "stage2.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.child[2:])
        return
    with tempfile.TemporaryDirectory(prefix="bench-stage2-") as tmp:
        results = [benchmark(n, args.disagree, n in args.llm_n, Path(tmp)) for n in args.sizes]
    table = report(results)
    print(table)
    write_results(args.json, {"machine": machine("torch", "pyarrow"), "results": results,
                              "disagree": args.disagree, "table": table})  # fmt: skip


if __name__ == "__main__":
    main()
