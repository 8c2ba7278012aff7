"""Reward-model training throughput: plain torch against our DeepSpeed presets, on the same batches.

Why: on one H100 a 0.5B Qwen2-style RM trained at 39.6k tokens/s in a plain bf16 torch loop but
19-24k through ``zero2-gpu-bf16.json`` and 13.5k through ``zero3-gpu-bf16.json``. This measures
every way of training the same model on the same micro-batches, one mode per subprocess (its own
CUDA context and process group), world size 1:

    torch-bf16    bf16 weights, ``torch.optim.AdamW(fused=True)`` (the issue's baseline; its
                  Adam states and updates are bf16 too, so not the same numerics as DeepSpeed's)
    torch-amp     fp32 master weights, bf16 autocast, fused AdamW: what DeepSpeed's bf16 mode
                  computes (bf16 matmuls, fp32 optimizer), the like-for-like baseline
    zero2, zero3  ``DeepSpeedStrategy`` with ``infra/deepspeed/zero{2,3}-gpu-bf16.json`` as
                  ``build_deepspeed_config`` resolves them for one rank (the real training path)
    zero1, zero0  the ZeRO-2 preset at stage 1, and at stage 0 (DeepSpeed's BF16_Optimizer)
    zero2-before  the ZeRO-2 preset as it was when the issue was measured: ``overlap_comm`` on
                  and bf16 ``check_grad_overflow`` on

Every mode clips gradients at 1.0 (as the presets do), uses lr 1e-5, betas (0.9, 0.95), no
weight decay, no dropout. Batches are collated and moved to the device before timing; ``warmup``
steps run untimed, then ``steps`` timed steps between two ``torch.cuda.synchronize()``.

API (what ``benchmarks/bench_gpu.py`` calls)::

    from benchmarks.gpu_training import run_training_bench
    result = run_training_bench(
        model_dir,            # a Hugging Face sequence-classification dir (config + weights;
                              # config.pad_token_id is the padding id, 0 when unset)
        batches,              # list of micro-batches {"chosen": [[ids...], ...], "rejected": [...]}
                              # (same number of each: one micro-batch of pairs), or a path to a
                              # JSON file holding that list; steps cycle through it
        modes=MODES,          # any of the names above
        steps=20, warmup=5,   # timed / untimed optimizer steps (one micro-batch each)
        device="cuda",        # or "cpu": a smoke run (DeepSpeed's CPU accelerator, gloo,
                              # bf16 as autocast over fp32 weights, like the CPU training profile)
        seed=0,
    )
    # or, instead of batches, a pair stage tokenised as training does (batches_from_pairs):
    run_training_bench(model_dir, pairs_dir=..., max_length=512, micro_batch=8, steps=20, ...)

It returns (and the CLI writes) this JSON-able dict::

    {"device": "NVIDIA H100 80GB HBM3" | "cpu", "model_dir": ..., "parameters": int,
     "steps": 20, "warmup": 5, "pairs_per_batch": 8, "tokens_per_step": float (non-pad, mean),
     "torch": "2.13.0", "deepspeed": "0.19.8",
     "modes": {"<mode>": {"tokens_per_s": float (non-pad tokens of timed steps / their time),
                          "step_ms": float, "peak_memory_gib": float | None (cuda only:
                          torch.cuda.max_memory_allocated over the whole run),
                          "loss": float (mean training loss of the timed steps),
                          "vs_baseline" (= "vs_torch_amp", the like-for-like baseline):
                          float | None, "vs_torch_amp", "vs_torch_bf16": float | None,
                          "config": {...} (the DeepSpeed config, DeepSpeed modes only)}
               | {"error": "last lines of the mode's stderr"}}}

Ratios are tokens/s over the baseline's (None when that baseline was not run or failed).

    .venv/bin/python -m benchmarks.gpu_training --model-dir D --batches batches.json
    .venv/bin/python -m benchmarks.gpu_training --model-dir D --pairs 8 --length 512   # random ids
    .venv/bin/python -m benchmarks.gpu_training --model-dir D --device cpu --steps 2 --warmup 1

Results: a table on stdout and ``benchmarks/results/gpu_training.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PRESETS = REPO / "infra" / "deepspeed"
LR = 1e-5
BETAS = (0.9, 0.95)
CLIP = 1.0
TORCH_MODES = ("torch-bf16", "torch-amp")
# mode → (preset, changes made to the config build_deepspeed_config resolves for one rank)
DEEPSPEED_MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "zero2": ("zero2-gpu-bf16.json", {}),
    "zero3": ("zero3-gpu-bf16.json", {}),
    "zero1": ("zero2-gpu-bf16.json", {"zero_optimization": {"stage": 1}}),
    "zero0": ("zero2-gpu-bf16.json", {"zero_optimization": {"stage": 0}}),
    "zero2-before": (
        "zero2-gpu-bf16.json",
        {"zero_optimization": {"overlap_comm": True}, "bf16": {"check_grad_overflow": True}},
    ),
}
MODES = (*TORCH_MODES, *DEEPSPEED_MODES)


def run_training_bench(
    model_dir: str,
    batches: list[dict[str, list[list[int]]]] | str | None = None,
    modes: tuple[str, ...] | list[str] = MODES,
    steps: int = 20,
    warmup: int = 5,
    device: str = "cuda",
    seed: int = 0,
    *,
    pairs_dir: str | None = None,
    max_length: int = 512,
    micro_batch: int = 8,
) -> dict[str, Any]:
    """Train ``model_dir`` on ``batches`` in each mode (one subprocess each); see the module
    docstring for the arguments and the result. Instead of ``batches``, ``pairs_dir`` (a pair
    stage) gives them: :func:`batches_from_pairs` with ``max_length`` and ``micro_batch``."""
    if (batches is None) == (pairs_dir is None):
        raise ValueError("give batches or pairs_dir (one of them)")
    if pairs_dir is not None:
        batches = batches_from_pairs(
            model_dir, pairs_dir, max_length, micro_batch, count=steps + warmup
        )
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; known: {list(MODES)}")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', not {device!r}")
    with tempfile.TemporaryDirectory(prefix="gpu-training-") as tmp:
        if isinstance(batches, str):
            batches_file = batches
            loaded = json.loads(Path(batches).read_text())
        else:
            batches_file, loaded = str(Path(tmp) / "batches.json"), batches
            Path(batches_file).write_text(json.dumps(batches))
        results = {}
        for mode in modes:
            out = Path(tmp) / f"{mode}.json"
            results[mode] = _run_mode(
                mode, model_dir, batches_file, steps, warmup, device, seed, out
            )
    info = next((r.pop("info") for r in results.values() if "info" in r), {})
    for name, baseline in (
        ("vs_baseline", "torch-amp"),
        ("vs_torch_amp", "torch-amp"),
        ("vs_torch_bf16", "torch-bf16"),
    ):
        base = results.get(baseline, {}).get("tokens_per_s")
        for r in results.values():
            if "tokens_per_s" in r:
                r[name] = r["tokens_per_s"] / base if base else None
    for r in results.values():
        r.pop("info", None)
    tokens = [_tokens(b) for b in loaded]
    return {
        **info,
        "model_dir": str(model_dir),
        "steps": steps,
        "warmup": warmup,
        "pairs_per_batch": max(len(b["chosen"]) for b in loaded),
        "tokens_per_step": sum(tokens) / len(tokens),
        "modes": results,
    }


def batches_from_pairs(
    model_dir: str, pairs_dir: str, max_length: int, micro_batch: int, count: int
) -> list[dict[str, list[list[int]]]]:
    """``count`` micro-batches of ``micro_batch`` pairs from a pair stage, tokenised as training
    does (``synpref_core.rm.data.encode_pairs`` with ``model_dir``'s tokenizer, ``max_length``
    tokens per side), in manifest order; cycled when the stage holds fewer pairs."""
    from synpref_core.rm.data import encode_pairs, read_shard
    from synpref_core.rm.model import load_tokenizer

    table, total = read_shard(pairs_dir, 0, 1)
    table = table.slice(0, min(total, count * micro_batch))
    chosen, rejected = encode_pairs(load_tokenizer(model_dir), table, max_length)
    rows = [i % len(chosen) for i in range(count * micro_batch)]
    return [
        {
            "chosen": [chosen[i] for i in rows[b : b + micro_batch]],
            "rejected": [rejected[i] for i in rows[b : b + micro_batch]],
        }
        for b in range(0, len(rows), micro_batch)
    ]


def random_batches(
    vocab_size: int, pairs: int, length: int, count: int, seed: int = 0
) -> list[dict[str, list[list[int]]]]:
    """``count`` micro-batches of ``pairs`` pairs of random ids in ``[1, vocab_size)``, each side
    between ``length // 2`` and ``length`` tokens (so batches are padded as real ones are)."""
    import random

    rng = random.Random(seed)

    def side() -> list[list[int]]:
        return [
            [rng.randrange(1, vocab_size) for _ in range(rng.randint(length // 2, length))]
            for _ in range(pairs)
        ]

    return [{"chosen": side(), "rejected": side()} for _ in range(count)]


def _tokens(batch: dict[str, list[list[int]]]) -> int:
    return sum(len(ids) for ids in batch["chosen"] + batch["rejected"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_mode(
    mode: str,
    model_dir: str,
    batches_file: str,
    steps: int,
    warmup: int,
    device: str,
    seed: int,
    out: Path,
) -> dict[str, Any]:
    """One mode in a fresh process, as one rank of a world of one (what init_distributed and
    DeepSpeed's engine read from the environment)."""
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    if device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    command = [sys.executable, "-m", "benchmarks.gpu_training", "--worker", mode]
    command += ["--model-dir", str(model_dir), "--batches", batches_file, "--device", device]
    command += ["--steps", str(steps), "--warmup", str(warmup), "--seed", str(seed)]
    command += ["--json", str(out)]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        return {"error": f"exit {done.returncode}: " + "\n".join(tail)}
    return json.loads(out.read_text())


# -- one mode, inside its subprocess ---------------------------------------------------------


def _deep_update(config: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _deep_update(config[key], value)
        else:
            config[key] = copy.deepcopy(value)


def deepspeed_config(mode: str, use_gpu: bool, pairs: int) -> dict[str, Any]:
    """The DeepSpeed config a DeepSpeed mode trains with (one rank, one micro-batch a step)."""
    from synpref_core.rm.strategy import build_deepspeed_config, load_preset

    preset, changes = DEEPSPEED_MODES[mode]
    config = build_deepspeed_config(
        load_preset(str(PRESETS / preset)),
        world_size=1,
        use_gpu=use_gpu,
        micro_batch=pairs,
        grad_accum=1,
        lr=LR,
        zero_stage=None,
        bf16=True,
        default_lr=LR,
        default_bf16=True,
    )
    _deep_update(config, changes)
    return config


def _collate(batch: dict[str, list[list[int]]], pad_id: int) -> dict[str, Any]:
    """Chosen then rejected, right-padded (as ``synpref_core.rm.data.collate``)."""
    import torch

    rows = batch["chosen"] + batch["rejected"]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _load(model_dir: str, seed: int) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification

    from synpref_core.rm.train import disable_dropout

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=1, dtype=torch.float32
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = 0
    disable_dropout(model)
    model.train()
    return model


def _torch_trainer(mode: str, model: Any, device: str) -> tuple[Any, Any]:
    """(forward(**batch) → rewards, step(loss)) for a plain torch mode."""
    import contextlib

    import torch

    if mode == "torch-bf16":
        model.to(device=device, dtype=torch.bfloat16)
        autocast: Any = contextlib.nullcontext()
    else:
        model.to(device)
        autocast = torch.autocast(device_type=device, dtype=torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if device == "cuda" else {}
    optimizer = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=1e-8, weight_decay=0.0, **fused)

    def forward(**batch: Any) -> Any:
        with autocast:
            return model(**batch).logits[:, 0].float()

    def step(loss: Any) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)  # foreach, no host sync
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return forward, step


def _deepspeed_trainer(mode: str, model: Any, device: str, pairs: int) -> tuple[Any, Any, dict]:
    from synpref_core.rm.strategy import DeepSpeedStrategy

    config = deepspeed_config(mode, device == "cuda", pairs)
    strategy = DeepSpeedStrategy(config, use_gpu=device == "cuda")
    strategy.setup(model)

    def forward(**batch: Any) -> Any:
        return strategy.forward(**batch).logits[:, 0].float()

    def step(loss: Any) -> None:
        strategy.backward(loss)
        strategy.step()

    return forward, step, config


def run_worker(
    mode: str, model_dir: str, batches_file: str, steps: int, warmup: int, device: str, seed: int
) -> dict[str, Any]:
    """Train ``warmup`` + ``steps`` micro-batches in ``mode`` in this process; the timed part's
    throughput."""
    from importlib.metadata import version

    import torch

    from synpref_core.rm.loss import bt_loss

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' but torch sees no GPU")
    torch.manual_seed(seed)
    batches = json.loads(Path(batches_file).read_text())
    model = _load(model_dir, seed)
    parameters = sum(p.numel() for p in model.parameters())
    pad_id = model.config.pad_token_id
    pairs = max(len(b["chosen"]) for b in batches)
    config = None
    if mode in TORCH_MODES:
        forward, step = _torch_trainer(mode, model, device)
    else:
        forward, step, config = _deepspeed_trainer(mode, model, device, pairs)
    on_device = [
        {k: v.to(device) for k, v in _collate(b, pad_id).items()} for b in batches
    ]  # before timing: the measurement is training, not host-to-device copies

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            began = time.perf_counter()
            loss_sum.zero_()
        batch = on_device[i % len(on_device)]
        rewards = forward(**batch)
        half = len(rewards) // 2
        loss = bt_loss(rewards[:half], rewards[half:])
        step(loss)
        loss_sum += loss.detach().to(torch.float64)
        if i >= warmup:
            tokens += _tokens(batches[i % len(batches)])
    sync()
    seconds = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    result: dict[str, Any] = {
        "tokens_per_s": tokens / seconds,
        "step_ms": 1000 * seconds / steps,
        "peak_memory_gib": peak,
        "loss": float(loss_sum) / steps,
        "info": {
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "parameters": parameters,
            "torch": torch.__version__,
            "deepspeed": version("deepspeed"),
        },
    }
    if config is not None:
        result["config"] = config
    return result


# -- command line ----------------------------------------------------------------------------


def _table(result: dict[str, Any]) -> str:
    lines = [
        f"{result.get('device')}, {result.get('parameters')} parameters, "
        f"{result['pairs_per_batch']} pairs/step, {result['tokens_per_step']:.0f} tokens/step, "
        f"{result['steps']} timed steps after {result['warmup']}",
        "",
        "| mode | tokens/s | ms/step | peak GiB | vs torch-amp | vs torch-bf16 | loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in result["modes"].items():
        if "error" in r:
            lines.append(f"| {mode} | failed: {r['error'].splitlines()[-1][:80]} ||||||")
            continue

        def num(value: float | None, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        lines.append(
            f"| {mode} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | "
            f"{num(r['peak_memory_gib'], '.2f')} | {num(r['vs_torch_amp'], '.2f')} | "
            f"{num(r['vs_torch_bf16'], '.2f')} | {r['loss']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="Hugging Face classifier directory.")
    parser.add_argument("--batches", help="JSON list of micro-batches; else random ids.")
    parser.add_argument("--pairs", type=int, default=8, help="Random batches: pairs per step.")
    parser.add_argument("--length", type=int, default=512, help="Random batches: max tokens.")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="Result file (default benchmarks/results/...).")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)  # one mode, inside
    args = parser.parse_args(argv)
    if args.worker:
        result = run_worker(
            args.worker,
            args.model_dir,
            args.batches,
            args.steps,
            args.warmup,
            args.device,
            args.seed,
        )
        Path(args.json).write_text(json.dumps(result))
        return
    batches: Any = args.batches
    if batches is None:
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(args.model_dir).vocab_size
        batches = random_batches(vocab, args.pairs, args.length, args.steps + args.warmup)
    result = run_training_bench(
        args.model_dir, batches, args.modes, args.steps, args.warmup, args.device, args.seed
    )
    print(_table(result))
    out = Path(args.json or REPO / "benchmarks" / "results" / "gpu_training.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
