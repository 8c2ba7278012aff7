"""Training benchmark: the DeepSpeed path against a plain torch loop, and the ``cpu`` profile's
time for 2,000 pairs.

Data: the bundled hh-rlhf harmless test split (real pairs), ingested by synpref, its first
``--pairs`` pairs for training and the rest (303 at the default) as a held-out gold set.

1. tokens/s, DeepSpeed vs torch: the same model, data, batches and trainable parameters, one
   process each (its own subprocess, ``--threads`` torch threads, like one Ray worker), timing
   ``--steps`` optimizer steps after ``--warmup`` untimed ones; ``--repeat R`` alternates the
   two R times and shows the median. The DeepSpeed side is
   ``DeepSpeedStrategy`` (ZeRO-1, CPU accelerator, gloo, world size 1); the torch side is
   ``torch.optim.AdamW`` + the same gradient clipping (1.0) and bf16 autocast setting.
2. The ``cpu`` profile end to end: ``train_reward_model`` with 2 Ray Train workers on ``--pairs``
   pairs, 1 epoch, a gold eval at the end; wall time with and without starting Ray.

    .venv/bin/python -m benchmarks.bench_training             # both (about 5 minutes here)
    .venv/bin/python -m benchmarks.bench_training --skip-e2e  # only the DeepSpeed/torch ratio
    .venv/bin/python -m benchmarks.bench_training --skip-ratio --repeat 3  # only the cpu profile

Results: a table on stdout and ``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, OtherLoad, machine, write_results

REPO = Path(__file__).resolve().parents[1]
HH = REPO / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
TARGET_RATIO = 0.9
TARGET_E2E_S = 120.0


def prepare_data(work: Path, pairs: int) -> tuple[str, str]:
    """(train manifest, gold manifest): hh-rlhf ingested, split into the first ``pairs`` pairs
    and the rest, each re-ingested as ``pairs`` JSONL (so both are real synpref manifests)."""
    from synpref_core.config import ExecutorConfig, IngestConfig, SourceSpec
    from synpref_core.ingest.pipeline import run_ingest
    from synpref_core.stages import iter_batches

    local = ExecutorConfig(kind="local")
    hh = run_ingest(
        IngestConfig(sources=[SourceSpec(format="hh-rlhf", paths=[str(HH)])], out=str(work / "hh")),
        local,
        progress=False,
    )
    rows = [r for b in iter_batches(hh.rsplit("/", 1)[0]) for r in b.to_pylist()]
    if len(rows) <= pairs:
        raise SystemExit(f"--pairs {pairs}: hh-rlhf has only {len(rows)} pairs")
    manifests = []
    for name, part in (("train", rows[:pairs]), ("gold", rows[pairs:])):
        path = work / f"{name}.jsonl"
        with path.open("w") as f:
            for r in part:
                record = {"prompt": r["conversation"], "chosen": r["chosen"]}
                f.write(json.dumps({**record, "rejected": r["rejected"]}) + "\n")
        config = IngestConfig(
            sources=[SourceSpec(format="pairs", paths=[str(path)])], out=str(work / name)
        )
        manifests.append(run_ingest(config, local, progress=False).rsplit("/", 1)[0])
    return manifests[0], manifests[1]


# -- one implementation's throughput, inside its own subprocess ------------------------------


def child_main(args: argparse.Namespace) -> None:
    import torch

    from synpref_core.rm.data import collate, encode_pairs, micro_batches, pair_lengths, read_shard
    from synpref_core.rm.loss import bt_loss
    from synpref_core.rm.model import load_reward_model
    from synpref_core.rm.train import (
        TrainConfig,
        disable_dropout,
        freeze_lower_layers,
        resolve_profile,
    )

    torch.set_num_threads(args.threads)
    config = TrainConfig(train_manifest=args.train, profile=args.profile, micro_batch=args.micro)
    profile = resolve_profile(config)
    torch.manual_seed(0)
    model, tokenizer = load_reward_model(config.model, dtype=torch.float32)
    freeze_lower_layers(model, profile.trainable_layers)
    disable_dropout(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    pairs, _ = read_shard(args.train, 0, 1)

    if args.child == "deepspeed":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port), RANK="0")
        os.environ.update(LOCAL_RANK="0", WORLD_SIZE="1", DS_ACCELERATOR="cpu")
        from synpref_core.rm.strategy import DeepSpeedStrategy, build_deepspeed_config

        ds_config = build_deepspeed_config(
            {},
            world_size=1,
            use_gpu=False,
            micro_batch=args.micro,
            grad_accum=1,
            lr=profile.lr,
            zero_stage=1,
            bf16=None,
            default_lr=profile.lr,
            default_bf16=profile.bf16,
        )
        strategy = DeepSpeedStrategy(ds_config, use_gpu=False)
        strategy.setup(model)

        def train_step(batch: dict, n: int) -> None:
            rewards = strategy.forward(**batch).logits[:, 0].float()
            strategy.backward(bt_loss(rewards[:n], rewards[n:]))
            strategy.step()

    else:
        optimizer = torch.optim.AdamW(trainable, lr=profile.lr, weight_decay=0.0)

        def train_step(batch: dict, n: int) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=profile.bf16):
                rewards = model(**batch).logits[:, 0].float()
            bt_loss(rewards[:n], rewards[n:]).backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    tokens, seconds = 0, 0.0
    total = args.warmup + args.steps
    for step, _, indices in micro_batches(pair_lengths(pairs), args.micro, 1, 0, 0, total):
        batch = collate(
            tokenizer, *encode_pairs(tokenizer, pairs.take(indices), profile.max_length)
        )
        began = time.perf_counter()
        train_step(batch, len(indices))
        if step >= args.warmup:
            seconds += time.perf_counter() - began
            tokens += int(batch["attention_mask"].sum())
    print(
        json.dumps(
            {
                "tokens_per_s": tokens / seconds,
                "pairs_per_s": args.steps * args.micro / seconds,
                "seconds": seconds,
                "bf16": profile.bf16,
                "max_length": profile.max_length,
                "trainable": sum(p.numel() for p in trainable),
            }
        )
    )


def measure(kind: str, args: argparse.Namespace, profile: str, train: str) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_training",
        "--child",
        kind,
        "--profile",
        profile,
        "--train",
        train,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--micro",
        str(args.micro),
        "--threads",
        str(args.threads),
        "--port",
        str(args.port),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{kind}/{profile} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_e2e(train: str, gold: str, out: str) -> dict[str, Any]:
    """The cpu profile through Ray Train (2 workers), timed with and without Ray's start."""
    import ray

    from synpref_core.config import ExecutorConfig
    from synpref_core.executors import ensure_ray
    from synpref_core.rm.train import TrainConfig, train_reward_model

    with OtherLoad() as other:
        began = time.perf_counter()
        ensure_ray(ExecutorConfig(kind="ray", ray_num_cpus=2))
        ray_s = time.perf_counter() - began
        config = TrainConfig(
            train_manifest=train,
            gold_manifest=gold,
            out=out,
            profile="cpu",
            workers=2,
            eval_every=10_000,
        )
        started = time.perf_counter()
        result = train_reward_model(config)
        train_s = time.perf_counter() - started
        ray.shutdown()
    return {
        "train_s": train_s,
        "with_ray_start_s": train_s + ray_s,
        "ray_start_s": ray_s,
        "other_load_cores": other.mean,
        "steps": result.steps,
        "gold_accuracy": result.best_gold_accuracy,
        "tokens_per_s": result.tokens_per_s,
        "history": [h.model_dump() for h in result.history],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--micro", type=int, default=8, help="pairs per step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--profiles", nargs="+", default=["cpu", "full"])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (median shown)")
    parser.add_argument("--skip-e2e", action="store_true", help="only the DeepSpeed/torch ratio")
    parser.add_argument("--skip-ratio", action="store_true", help="only the end-to-end run")
    parser.add_argument("--json", default=str(RESULTS / "training.json"))
    parser.add_argument("--child", choices=["deepspeed", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--profile", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=29517, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    report: dict[str, Any] = {"machine": machine("torch"), "args": vars(args), "ratio": {}}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        train, gold = prepare_data(Path(tmp), args.pairs)
        print("| profile | torch tokens/s | DeepSpeed tokens/s | DeepSpeed / torch |")
        print("|---|---:|---:|---:|")
        for profile in [] if args.skip_ratio else args.profiles:
            runs: dict[str, list[dict[str, Any]]] = {"torch": [], "deepspeed": []}
            for _ in range(args.repeat):  # alternate, so drifting load hits both alike
                for kind in runs:
                    runs[kind].append(measure(kind, args, profile, train))
            plain, deep = (_median(runs[kind]) for kind in ("torch", "deepspeed"))
            ratio = deep["tokens_per_s"] / plain["tokens_per_s"]
            report["ratio"][profile] = {"runs": runs, "ratio": ratio}
            print(
                f"| {profile} | {plain['tokens_per_s']:,.0f} | {deep['tokens_per_s']:,.0f} "
                f"| {ratio:.2f} ({'met' if ratio >= TARGET_RATIO else 'NOT met'}: ≥ "
                f"{TARGET_RATIO}) |"
            )
        if not args.skip_e2e:
            runs = [run_e2e(train, gold, str(Path(tmp) / f"rm-{i}")) for i in range(args.repeat)]
            e2e = sorted(runs, key=lambda r: r["train_s"])[len(runs) // 2]
            report["e2e"] = {"runs": runs, "median": e2e}
            verdict = "met" if e2e["train_s"] <= TARGET_E2E_S else "NOT met"
            each = ", ".join(f"{r['train_s']:.0f} s @ {r['other_load_cores']:.1f}" for r in runs)
            print(
                f"\ncpu profile, {args.pairs} pairs, 2 Ray Train workers (median of "
                f"{len(runs)}): train_reward_model {e2e['train_s']:.1f} s ({verdict}: ≤ "
                f"{TARGET_E2E_S:.0f} s; {e2e['with_ray_start_s']:.1f} s with Ray's start), "
                f"{e2e['steps']} steps, {e2e['tokens_per_s']:,.0f} tokens/s in train steps, "
                f"held-out gold accuracy {e2e['gold_accuracy']:.3f}; other load on the box "
                f"{e2e['other_load_cores']:.2f} cores (all runs, s @ other cores: {each})"
            )
    write_results(args.json, report)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]


if __name__ == "__main__":
    main()
