"""bf16 against fp32 scoring: do the pairwise decisions agree, and how much faster is it?

The scoring stage's ``dtype: auto`` is float32 on CPUs and bfloat16 on CUDA. This benchmark
measures what bf16 costs on the CPU: how often the pairwise decisions (r_chosen > r_rejected)
differ from float32 on the bundled human-labelled benchmark pairs, and how much faster it runs,
so anyone can repeat it on their model and CPU (``synpref eval --compare-dtype`` does the same
for any model, pairs and device; ``benchmarks/bench_gpu.py`` on a GPU).

Data (real, bundled in data/): LLMBar (every subset), PandaLM, OffsetBias, ingested by synpref
(about 2,300 pairs). Each model scores every pair through ``ScoreStage`` on the CPU, once in
float32 and once in bfloat16, in this process (torch's default threads); the table gives the
decision agreement, the largest |Δp| (p = σ(r_chosen − r_rejected)), the share of flipped
decisions among near-ties, and the wall time of each.

    .venv/bin/python -m benchmarks.bench_dtype                      # MiniLM with its seeded head
    .venv/bin/python -m benchmarks.bench_dtype --model .synpref/train_rm/rm/best   # a trained RM

Results: a table on stdout and ``benchmarks/results/dtype.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from synpref_core.config import ExecutorConfig, IngestConfig, SourceSpec
from synpref_core.executors import run
from synpref_core.ingest.pipeline import run_ingest
from synpref_core.rm.scoring import ScoreConfig, ScoreStage
from synpref_core.rm.train import cpu_has_bf16

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
RESULTS = REPO / "benchmarks" / "results"
AGREEMENT_TARGET = 0.999
NEAR_TIE = 0.01  # |p − 0.5| below this counts as a near-tie


def ingest_benchmarks(work: Path) -> str:
    sources = [
        SourceSpec(format="llmbar", paths=[str(DATA / "llmbar" / "Dataset")], decontaminate=False),
        SourceSpec(format="pandalm", paths=[str(DATA / "pandalm")], decontaminate=False),
        SourceSpec(format="offsetbias", paths=[str(DATA / "offsetbias")], decontaminate=False),
    ]
    config = IngestConfig(sources=sources, out=str(work / "pairs"))
    return run_ingest(config, ExecutorConfig(kind="local"), progress=False)


def score(pairs: str, model: str, dtype: str, out: Path) -> tuple[dict[str, np.ndarray], float]:
    config = ScoreConfig(model=model, pairs=pairs, out=str(out), device="cpu", dtype=dtype)
    began = time.perf_counter()
    run(ScoreStage(config), progress=False)
    seconds = time.perf_counter() - began
    table = pq.read_table(out / "data").sort_by("pair_id")
    return {name: table[name].to_numpy() for name in ("r_chosen", "r_rejected", "p")}, seconds


def compare(model: str, pairs: str, work: Path) -> dict[str, Any]:
    fp32, fp32_s = score(pairs, model, "float32", work / "fp32")
    bf16, bf16_s = score(pairs, model, "bfloat16", work / "bf16")
    decide = {k: v["r_chosen"] > v["r_rejected"] for k, v in (("fp32", fp32), ("bf16", bf16))}
    agree = decide["fp32"] == decide["bf16"]
    near = np.abs(fp32["p"] - 0.5) < NEAR_TIE
    return {
        "model": model,
        "pairs": int(agree.size),
        "agreement": float(agree.mean()),
        "flipped": int((~agree).sum()),
        "flipped_near_ties": int((~agree & near).sum()),
        "max_abs_dp": float(np.abs(fp32["p"] - bf16["p"]).max()),
        "fp32_s": fp32_s,
        "bf16_s": bf16_s,
        "speedup": fp32_s / bf16_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="RM dir or name (repeatable)")
    parser.add_argument("--json", type=Path, default=RESULTS / "dtype.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pairs = ingest_benchmarks(Path(tmp))
        for i, model in enumerate(args.model or ["minilm"]):
            rows.append(compare(model, pairs, Path(tmp) / f"m{i}"))
    print(f"CPU native bf16: {cpu_has_bf16()}; target agreement ≥ {AGREEMENT_TARGET:.1%}\n")
    print("| model | pairs | agreement | flipped (near-ties) | max abs dp | fp32 s | bf16 s | × |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['pairs']:,} | {r['agreement']:.4%} | {r['flipped']} "
            f"({r['flipped_near_ties']}) | {r['max_abs_dp']:.2e} | {r['fp32_s']:.1f} | "
            f"{r['bf16_s']:.1f} | {r['speedup']:.2f} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"native_bf16": cpu_has_bf16(), "rows": rows}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
