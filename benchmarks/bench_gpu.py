"""The GPU paths at the hardware bound (issue 14): scoring and DeepSpeed training on one GPU.

One script, one JSON. It builds two reward models with random weights from configs (nothing is
downloaded): MiniLM-L6 (the bundled model's own config) and a 0.49B Qwen2-style model (Qwen2.5-
0.5B's shape: 24 layers, width 896, MLP 4,864, 14 heads, 2 KV heads, its 151,936-token
embedding), both over the bundled MiniLM tokenizer, and takes the real hh-rlhf harmless test
pairs through synpref's ingest (2,303 pairs). Then, per model, on the same pairs:

Scoring (pairs/s; bf16 weights on CUDA, max_length 512):

- **naive**: render, tokenise padded to max_length, batches of 32 in input order, ``.cpu()``
  after each batch.
- **synpref, old default**: ``ScoreStage`` with ``token_budget=4096`` and no prefetching (what
  ran before issue 14).
- **synpref**: ``ScoreStage`` with its defaults on the device (budget chosen from free memory,
  prefetching on CUDA): read, render, tokenise, score, write Parquet.
- **bound**: the forward passes alone: the same length-sorted batches under synpref's budget,
  tokenised, padded and on the device beforehand, run back to back.

Also measured: the weights fingerprint cold (every cache empty) and warm (a new process: the
on-disk cache only), peak GPU memory while scoring and models held in the cache, and decision
agreement of bf16 against fp32 scores (``synpref eval --compare-dtype``'s figures).

Training (non-pad tokens/s, the same batches for every mode): ``benchmarks/gpu_training.py``'s
modes (plain torch, DeepSpeed ZeRO-2 and ZeRO-3 presets from ``infra/deepspeed/``), each in its
own process, warm-up steps untimed.

    .venv/bin/python -m benchmarks.bench_gpu                 # on a GPU machine (~6 min on an H100)
    .venv/bin/python -m benchmarks.bench_gpu --smoke         # tiny models on the CPU (~1 min)
    .venv/bin/python -m benchmarks.bench_gpu --skip-training # scoring only

Results: a Markdown table on stdout and ``benchmarks/results/gpu.json``.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks import bench_scoring as scoring_bench
from benchmarks.common import RESULTS, machine, write_results
from synpref_core import models as model_cache
from synpref_core.config import IngestConfig, SourceSpec
from synpref_core.executors import run
from synpref_core.ingest.pipeline import run_ingest
from synpref_core.models import FINGERPRINT_FILE, model_fingerprint
from synpref_core.rm.evaluate import decision_changes
from synpref_core.rm.model import load_tokenizer, render, resolve_backbone
from synpref_core.rm.scoring import (
    CPU_TOKEN_BUDGET,
    ScoreConfig,
    ScoreStage,
    cached_reward_model,
    preference_probability,
    token_budget_for,
)
from synpref_core.stages import load_manifest

REPO = Path(__file__).resolve().parents[1]
HH = REPO / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
NAIVE_BATCH = 32
TARGET_VS_BOUND = 0.9
TARGET_TRAINING = 0.9


# -- the models ------------------------------------------------------------------------------


def model_configs(tokenizer: Any, smoke: bool) -> dict[str, Any]:
    """The configs of the two models (random weights), or two tiny ones for ``smoke``."""
    from transformers import AutoConfig, Qwen2Config

    if smoke:
        minilm = AutoConfig.from_pretrained(resolve_backbone("minilm"))
        minilm.update({"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
                       "num_attention_heads": 2})  # fmt: skip
        qwen = Qwen2Config(
            vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        )  # fmt: skip
    else:
        minilm = AutoConfig.from_pretrained(resolve_backbone("minilm"))
        qwen = Qwen2Config(  # Qwen2.5-0.5B's shape
            vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
            rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        )  # fmt: skip
    return {"minilm": minilm, "qwen-0.5b": qwen}


def build_model(config: Any, tokenizer: Any, directory: Path) -> Path:
    """A one-output sequence classifier with seeded random weights, saved with the tokenizer."""
    from transformers import AutoModelForSequenceClassification

    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# -- the data --------------------------------------------------------------------------------


def prepare_pairs(records: int | None, tmp: Path) -> str:
    """The hh-rlhf harmless test records (the first ``records``) through the real ingest."""
    lines = gzip.decompress(HH.read_bytes()).splitlines(keepends=True)
    source = tmp / "hh.jsonl"
    source.write_bytes(b"".join(lines[:records]))
    config = IngestConfig(
        sources=[SourceSpec(format="hh-rlhf", paths=[str(source)])], out=str(tmp / "pairs")
    )
    return run_ingest(config, progress=False).rsplit("/", 1)[0]


def read_pairs(pairs_dir: str) -> pa.Table:
    files = load_manifest(pairs_dir).paths()
    columns = ["conversation", "chosen", "rejected"]
    return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)


# -- scoring ---------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_naive(model: Any, tokenizer: Any, pairs: pa.Table, max_length: int) -> np.ndarray:
    conversations = pairs["conversation"].to_pylist()
    rewards = []
    with torch.inference_mode():
        for side in ("chosen", "rejected"):
            responses = pairs[side].to_pylist()
            for start in range(0, len(responses), NAIVE_BATCH):
                end = start + NAIVE_BATCH
                texts = [render(tokenizer, c, r) for c, r in zip(
                    conversations[start:end], responses[start:end], strict=True)]  # fmt: skip
                batch = tokenizer(texts, padding="max_length", truncation=True,
                                  max_length=max_length, return_tensors="pt")  # fmt: skip
                batch = {k: v.to(model.device) for k, v in batch.items()}
                rewards.append(model(**batch).logits[:, 0].double().cpu().numpy())
    return np.concatenate(rewards)


def run_synpref(
    pairs_dir: str, model_dir: str, out: str, max_length: int, **options: Any
) -> np.ndarray:
    """``ScoreStage`` in this process (the model already in the per-process cache)."""
    config = ScoreConfig(
        model=model_dir, pairs=pairs_dir, out=out, max_length=max_length, **options
    )
    run(ScoreStage(config), progress=False)
    scores = pq.read_table(sorted(Path(out, "data").glob("*.parquet")))
    return np.concatenate([scores["r_chosen"].to_numpy(), scores["r_rejected"].to_numpy()])


def prepare_bound(
    tokenizer: Any, pairs: pa.Table, max_length: int, budget: int, device: torch.device
) -> list[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """``bench_scoring``'s tokenised, length-sorted, padded batches, already on the device."""
    batches = [
        (b["index"], b["input_ids"].to(device), b["attention_mask"].to(device))
        for b in scoring_bench.prepare_bound(tokenizer, pairs, budget, max_length)
    ]
    sync(device)
    return batches


def run_bound(model: Any, batches: list) -> np.ndarray:
    rewards = np.empty(sum(len(index) for index, _, _ in batches))
    outputs = []
    with torch.inference_mode():
        for _, ids, mask in batches:
            outputs.append(model(input_ids=ids, attention_mask=mask).logits[:, 0])
        values = torch.cat(outputs).double().cpu().numpy()
    rewards[np.concatenate([index for index, _, _ in batches])] = values
    return rewards


def timed(fn: Callable[..., Any], device: torch.device, *args: Any, **kw: Any) -> tuple[Any, float]:
    sync(device)
    began = time.perf_counter()
    result = fn(*args, **kw)
    sync(device)
    return result, time.perf_counter() - began


def fingerprint_times(model_dir: str) -> dict[str, float]:
    """The weights fingerprint with every cache empty, then as a new process finds it (the
    on-disk cache beside the model, nothing in memory)."""
    (Path(model_dir) / FINGERPRINT_FILE).unlink(missing_ok=True)
    model_cache._DIGESTS.clear()
    began = time.perf_counter()
    cold = model_fingerprint(model_dir)
    cold_s = time.perf_counter() - began
    model_cache._DIGESTS.clear()
    began = time.perf_counter()
    warm = model_fingerprint(model_dir)
    warm_s = time.perf_counter() - began
    assert cold == warm
    return {"cold_s": cold_s, "warm_s": warm_s}


def agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """``synpref eval --compare-dtype``'s figures for two score runs (rewards: the chosen
    half, then the rejected half)."""
    n = len(reference) // 2
    p = [preference_probability(r[:n], r[n:]) for r in (reference, other)]
    return decision_changes(*p)


def bench_scoring(
    name: str, model_dir: str, pairs_dir: str, max_length: int, repeat: int, tmp: Path
) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pairs = read_pairs(pairs_dir)
    n = pairs.num_rows
    fingerprint = fingerprint_times(model_dir)
    began = time.perf_counter()
    model, tokenizer = cached_reward_model(model_dir)  # auto: bf16 on CUDA, fp32 on CPU
    load_s = time.perf_counter() - began
    budget = token_budget_for(model, max_length)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm = pairs.slice(0, min(n, 64))
    run_naive(model, tokenizer, warm, max_length)  # kernels set up outside every timing
    run_bound(model, prepare_bound(tokenizer, warm, max_length, budget, device))

    times: dict[str, list[float]] = {k: [] for k in ("naive", "synpref_old", "synpref", "bound")}
    outputs: dict[str, np.ndarray] = {}
    for r in range(repeat):  # interleaved: drifting load hits them all alike
        outputs["naive"], t = timed(run_naive, device, model, tokenizer, pairs, max_length)
        times["naive"].append(t)
        out = str(tmp / f"{name}-old-{r}")
        old = {"token_budget": max(CPU_TOKEN_BUDGET, max_length), "prefetch": False}
        outputs["synpref_old"], t = timed(
            run_synpref, device, pairs_dir, model_dir, out, max_length, **old
        )
        times["synpref_old"].append(t)
        out = str(tmp / f"{name}-new-{r}")
        outputs["synpref"], t = timed(run_synpref, device, pairs_dir, model_dir, out, max_length)
        times["synpref"].append(t)
        batches = prepare_bound(tokenizer, pairs, max_length, budget, device)
        outputs["bound"], t = timed(run_bound, device, model, batches)
        times["bound"].append(t)
        del batches
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    held = len([k for k in model_cache._MODELS if k[1] == model_dir])

    # bf16 against fp32 (the CPU's default is fp32: score bf16 there explicitly)
    fp32 = run_synpref(pairs_dir, model_dir, str(tmp / f"{name}-fp32"), max_length, dtype="float32")
    bf16 = outputs["synpref"]
    if model.dtype != torch.bfloat16:
        out = str(tmp / f"{name}-bf16")
        bf16 = run_synpref(pairs_dir, model_dir, out, max_length, dtype="bfloat16")
    best = {k: min(v) for k, v in times.items()}
    rates = {k: n / s for k, s in best.items()}
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(model.dtype).split(".")[-1],
        "device": str(device),
        "pairs": n,
        "max_length": max_length,
        "token_budget": budget,
        "model_load_s": load_s,
        "fingerprint": fingerprint,
        "seconds": times,
        "pairs_per_s": rates,
        "synpref_vs_bound": rates["synpref"] / rates["bound"],
        "synpref_vs_naive": rates["synpref"] / rates["naive"],
        "old_vs_naive": rates["synpref_old"] / rates["naive"],
        "peak_gpu_gib": peak,
        "models_held": held,
        "same_scores": {  # synpref against the bound's forward passes (same batches)
            "max_abs_diff": float(np.abs(outputs["synpref"] - outputs["bound"]).max()),
        },
        "bf16_vs_fp32": agreement(fp32, bf16),
    }


# -- training --------------------------------------------------------------------------------


def bench_training(model_dir: str, pairs_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.gpu_training import run_training_bench

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return run_training_bench(
        model_dir=model_dir,
        pairs_dir=pairs_dir,
        max_length=args.max_length,
        micro_batch=args.micro_batch,
        steps=args.train_steps,
        warmup=args.train_warmup,
        device=device,
    )


# -- the report ------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    lines = ["| scoring, pairs/s | " + " | ".join(s["model"] for s in result["scoring"]) + " |"]
    lines.append("|---|" + "---:|" * len(result["scoring"]))
    labels = {
        "naive": f"naive (pad to max_length, batch {NAIVE_BATCH})",
        "synpref_old": "synpref, budget 4,096, no prefetch (before)",
        "synpref": "synpref, defaults on the device",
        "bound": "bound (forward passes only)",
    }
    for key, label in labels.items():
        cells = [f"{s['pairs_per_s'][key]:,.0f}" for s in result["scoring"]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, label in (("synpref_vs_bound", "synpref / bound"),
                       ("synpref_vs_naive", "synpref / naive")):  # fmt: skip
        lines.append(
            f"| {label} | " + " | ".join(f"{s[key]:.2f}" for s in result["scoring"]) + " |"
        )
    rows = {
        "token budget": lambda s: f"{s['token_budget']:,}",
        "fingerprint cold / warm, s": lambda s: (
            f"{s['fingerprint']['cold_s']:.3f} / {s['fingerprint']['warm_s']:.4f}"
        ),
        "peak GPU GiB": lambda s: "–" if s["peak_gpu_gib"] is None else f"{s['peak_gpu_gib']:.1f}",
        "bf16 vs fp32 decisions agree": lambda s: (
            f"{100 * s['bf16_vs_fp32']['decision_agreement']:.1f}% "
            f"(max |Δp| {s['bf16_vs_fp32']['max_abs_dp']:.3f})"
        ),
    }
    for label, cell in rows.items():
        lines.append(f"| {label} | " + " | ".join(cell(s) for s in result["scoring"]) + " |")
    training = result.get("training")
    if training:
        header = " | ".join(f"{name} tokens/s | × torch-amp | × torch-bf16" for name in training)
        lines += ["", f"| training | {header} |", "|---|" + "---:|" * 3 * len(training)]
        for mode in next(iter(training.values()))["modes"]:
            cells = []
            for per_model in training.values():
                got = per_model["modes"].get(mode, {})
                if "tokens_per_s" not in got:
                    cells += ["failed", "–", "–"]
                    continue
                cells.append(f"{got['tokens_per_s']:,.0f}")
                for key in ("vs_torch_amp", "vs_torch_bf16"):
                    cells.append("–" if got.get(key) is None else f"{got[key]:.2f}")
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models, few pairs (CPU)")
    parser.add_argument("--records", type=int, default=None, help="hh-rlhf records (all)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each scorer")
    parser.add_argument("--models", nargs="+", default=["minilm", "qwen-0.5b"])
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--train-models", nargs="+", default=["qwen-0.5b"])
    parser.add_argument("--micro-batch", type=int, default=8, help="pairs per training step")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--train-warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, default=RESULTS / "gpu.json")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: running the CPU smoke (tiny models, a few pairs); the figures "
              "of the issue need a GPU machine", file=sys.stderr)  # fmt: skip
        args.smoke = True
    if args.smoke:
        args.records = args.records or 40
        args.max_length = min(args.max_length, 64)
        args.repeat = 1
        args.train_steps, args.train_warmup, args.micro_batch = 2, 1, 2

    result: dict[str, Any] = {
        "machine": machine("torch", "transformers", "deepspeed"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "smoke": args.smoke,
        "scoring": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        tokenizer = load_tokenizer("minilm")
        configs = model_configs(tokenizer, args.smoke)
        pairs_dir = prepare_pairs(args.records, tmp)
        dirs = {}
        for name in dict.fromkeys(
            [*args.models, *([] if args.skip_training else args.train_models)]
        ):
            dirs[name] = str(build_model(configs[name], tokenizer, tmp / name))
        for name in args.models:
            print(f"scoring with {name}...", file=sys.stderr, flush=True)
            result["scoring"].append(
                bench_scoring(name, dirs[name], pairs_dir, args.max_length, args.repeat, tmp)
            )
            model_cache._MODELS.clear()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if not args.skip_training:
            result["training"] = {}
            for name in args.train_models:
                print(f"training {name}...", file=sys.stderr, flush=True)
                result["training"][name] = bench_training(dirs[name], pairs_dir, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(markdown(result))
    write_results(args.json, result)
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
