"""Reward-model training: Bradley-Terry on pair manifests, DeepSpeed through Ray Train, the best
checkpoint by gold accuracy exported as a plain Hugging Face directory (DESIGN §4).

    result = train_reward_model(TrainConfig(train_manifest=..., gold_manifest=...), executor)
    version = register_model(result, config, train_manifest, tracking)  # rm/registry.py

Locally (embedded default) this starts a local Ray and trains on its CPU workers with DeepSpeed's
CPU accelerator; at scale set ``executor.ray_address``, ``use_gpu=True`` and a preset from
``infra/deepspeed/`` (``paper-8b.json`` holds the paper's settings). Outputs under ``out``:

    best/   the best model by gold accuracy: config.json, model.safetensors, tokenizer files and
            synpref_eval.json (step, accuracy, gold scores) and synpref_training.json (the
            resolved profile: max_length, trainable layers, lr, bf16, and the whole config;
            scoring reads its max_length); loadable with transformers alone
    ray/    Ray Train runs; each holds the resumable DeepSpeed checkpoints reported at every eval

Re-running the same config (``max_steps`` aside) with the same ``out`` resumes from the latest
checkpoint: step, optimizer and schedule state, history and best accuracy.

Profiles. ``full`` trains every parameter at 256 tokens (the default with GPUs). ``cpu`` (the
default without) is still a real reward model, sized for a 2-core box: 96 tokens per side
(truncated from the left, so the response stays), everything frozen below the top encoder layer
(the top layer, pooler and score head train: 1.9M of MiniLM's 22.7M parameters) and bf16
autocast where the CPU has native bf16. Measured on the 2-core dev box (2 Ray Train workers,
MiniLM-L6, ``benchmarks/bench_training.py``): 2,000 hh-rlhf pairs in 78 s end to end (81 s
with Ray's start; 110-130 s at 128 tokens), 0.60 accuracy on the 303 held-out pairs; full
fine-tuning at 256 tokens runs at ~2 pairs/s per core, about 8× slower.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from synpref_core.config import DEFAULT_HOME, ExecutorConfig, StrictModel, config_hash
from synpref_core.rm.data import (
    collate,
    encode_pairs,
    micro_batches,
    pair_lengths,
    read_shard,
    score_encoded_pairs,
)
from synpref_core.rm.model import EVAL_FILE, TRAINING_FILE

CHECKPOINTS_KEPT = 2  # the latest (to resume) and the one before it, in case the latest is torn
MODEL_NAME = "synpref-rm"  # the MLflow registered model (synpref_core.rm.registry)
EVAL_BATCH_FACTOR = 2  # eval batches hold 2× the training micro-batch (no activations kept)
PROGRESS_KEY = "_progress"  # the driver's progress queue, beside the config of the workers


class TrainConfig(StrictModel):
    """One reward-model training run. ``None`` means: the profile's or preset's value."""

    # -- data --------------------------------------------------------------------------------
    train_manifest: str = Field(
        "", description="Pair stage to train on (dir or manifest.json); the train_rm flow sets it."
    )
    gold_manifest: str | None = Field(
        None, description="Human-verified pairs scored at each eval; None: the last is the best."
    )
    out: str = Field(str(DEFAULT_HOME / "rm"), description="Output dir: best/ and ray/.")
    # -- model -------------------------------------------------------------------------------
    model: str = Field("minilm", description="Backbone: HF name or path; 'minilm' is bundled.")
    profile: Literal["full", "cpu"] | None = Field(
        None, description="'full' (every layer, 256 tokens) or 'cpu'; None: full with GPUs."
    )
    max_length: int | None = Field(
        None, ge=8, description="Tokens per side; None: 256 (full) or 96 (cpu)."
    )
    trainable_layers: int | None = Field(
        None, ge=0, description="Top encoder layers trained; None: all (full) or 1 (cpu)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward (long contexts, large models)."
    )
    # -- optimisation ------------------------------------------------------------------------
    lr: float | None = Field(None, gt=0, description="Peak AdamW lr; None: preset, else profile.")
    micro_batch: int | None = Field(None, ge=1, description="Pairs per worker per micro-step.")
    grad_accum: int | None = Field(None, ge=1, description="Micro-steps per optimizer step.")
    epochs: int = Field(1, ge=1, description="Passes over the training pairs (the paper: 1).")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (a re-run resumes)."
    )
    schedule: Literal["constant", "linear"] = Field(
        "constant", description="After warm-up: constant, or linear decay to 0."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear lr warm-up, in optimizer steps.")
    margin: float = Field(0.0, description="m in −log σ(r_w − r_l − m); 0 is plain BT.")
    seed: int = Field(0, description="Seeds the new score head and the data order.")
    # -- evaluation and checkpoints -----------------------------------------------------------
    eval_every: int = Field(50, ge=1, description="Optimizer steps between evals + checkpoints.")
    # -- compute -----------------------------------------------------------------------------
    workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL; else CPU and gloo.")
    zero_stage: Literal[0, 1, 2, 3] | None = Field(None, description="None: preset's, else 1.")
    bf16: bool | None = Field(
        None, description="None: preset's, else on with GPUs / for 'cpu' on bf16-native CPUs."
    )
    deepspeed_config: str | None = Field(None, description="DeepSpeed JSON preset path.")


class TrainEntry(BaseModel):
    step: int
    loss: float
    gold_accuracy: float | None


class TrainResult(BaseModel):
    best_dir: str
    best_gold_accuracy: float | None
    best_step: int
    steps: int
    history: list[TrainEntry]
    tokens_per_s: float = Field(description="Non-pad training tokens per second, all workers.")
    resumed_from: int = Field(description="Step this session started from (0: a fresh run).")
    checkpoint: str | None = Field(description="Latest DeepSpeed checkpoint (Ray Train).")


class Profile(NamedTuple):
    max_length: int
    trainable_layers: int | None  # None: all
    lr: float
    bf16: bool


def resolve_profile(config: TrainConfig) -> Profile:
    """The concrete profile settings; explicit config fields win."""
    name = config.profile or ("full" if config.use_gpu else "cpu")
    if name == "full":
        base = Profile(max_length=256, trainable_layers=None, lr=1e-5, bf16=config.use_gpu)
    else:
        base = Profile(max_length=96, trainable_layers=1, lr=1e-4, bf16=cpu_has_bf16())
    layers = base.trainable_layers if config.trainable_layers is None else config.trainable_layers
    return base._replace(max_length=config.max_length or base.max_length, trainable_layers=layers)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (else bf16 autocast would be slower, not faster)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def training_record(config: TrainConfig, profile: Profile) -> dict[str, Any]:
    """What the exported model was trained with (``synpref_training.json`` beside it)."""
    return {
        "profile": config.profile or ("full" if config.use_gpu else "cpu"),
        **profile._asdict(),
        "config": config.model_dump(mode="json"),
    }


def run_identity(config: TrainConfig) -> str:
    """Name of the Ray Train run: what the weights depend on (not ``out`` or ``max_steps``), so
    a re-run of the same training resumes and a different one starts afresh."""
    return "rm-" + config_hash(config.model_copy(update={"out": "", "max_steps": None}))


# -- pieces of the training loop (pure, or one rank's view) ----------------------------------


def freeze_lower_layers(model: Any, trainable_layers: int | None) -> None:
    """Train only the top ``trainable_layers`` blocks of the backbone and what comes after them
    (final norm or pooler, score head); embeddings and lower blocks get ``requires_grad=False``,
    so backward stops at the lowest trained block. ``None``: train everything."""
    if trainable_layers is None:
        return
    base = list(model.base_model.parameters())  # in registration order: embeddings → blocks → …
    blocks = max(
        (m for m in model.base_model.modules() if type(m).__name__ == "ModuleList"), key=len
    )
    in_blocks = {id(p) for p in blocks.parameters()}
    after_blocks = base[max(i for i, p in enumerate(base) if id(p) in in_blocks) + 1 :]
    top = blocks[max(0, len(blocks) - trainable_layers) :] if trainable_layers else []
    train = {id(p) for block in top for p in block.parameters()}
    train |= {id(p) for p in after_blocks}
    in_base = {id(p) for p in base}
    for param in model.parameters():
        param.requires_grad_(id(param) in train or id(param) not in in_base)


def disable_dropout(model: Any) -> None:
    """Dropout off, as TRL's reward trainer does: training is deterministic (a resumed run
    equals an uninterrupted one) and the scores it optimises are the ones it will serve."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def best_entry(history: list[dict]) -> dict | None:
    """The checkpoint to keep: highest gold accuracy, the earliest on ties; without gold
    accuracies, the latest."""
    scored = [h for h in history if h["gold_accuracy"] is not None]
    if not scored:
        return history[-1] if history else None
    return max(scored, key=lambda h: h["gold_accuracy"])  # max keeps the first of equals


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# -- the job ---------------------------------------------------------------------------------


def train_loop_per_worker(config_dict: dict[str, Any]) -> None:
    """One Ray Train worker, top to bottom: config, model, data, strategy, resume, then train
    with a gold eval, an export of the best model, a checkpoint and a report every
    ``eval_every`` optimizer steps and at the end."""
    import ray.train
    import torch
    import torch.distributed as dist

    from synpref_core.rm.loss import bt_loss

    progress = config_dict.pop(PROGRESS_KEY, None)
    config = TrainConfig.model_validate(config_dict)
    profile = resolve_profile(config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    progress = progress if rank == 0 else None
    model, tokenizer = _load_model(config, profile)
    pairs, total_pairs = read_shard(config.train_manifest, rank, world)
    pairs = pairs.slice(0, total_pairs // world)  # equal shards: every rank steps together
    gold = _load_gold(config, tokenizer, profile.max_length, rank, world)
    strategy, total_steps = _setup_strategy(config, profile, model, world, pairs.num_rows)
    micro, accum = strategy.micro_batch, strategy.grad_accum

    start, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = strategy.load_checkpoint(directory)
        start, history = state["step"], state["history"]

    # Kept on the device and read only at evals: a per-step loss.item() would make the host wait
    # for the GPU every step (nothing queued ahead while Python prepares the next batch).
    loss_sum = torch.zeros((), dtype=torch.float64, device=strategy.device)
    micro_steps = 0  # micro-batch losses in loss_sum
    speed = torch.zeros(2, dtype=torch.float64)  # (non-pad tokens, seconds in train steps)
    steps = micro_batches(pair_lengths(pairs), micro, accum, config.seed, start, total_steps)
    _tell(progress, {"start": start, "total": total_steps})
    for step, last_micro, indices in steps:
        began = time.perf_counter()
        chosen, rejected = encode_pairs(tokenizer, pairs.take(indices), profile.max_length)
        cpu_batch = collate(tokenizer, chosen, rejected)
        tokens = float(cpu_batch["attention_mask"].sum())  # counted before the copy: no sync
        batch = {k: v.to(strategy.device) for k, v in cpu_batch.items()}
        rewards = strategy.forward(**batch).logits[:, 0].float()
        loss = bt_loss(rewards[: len(indices)], rewards[len(indices) :], config.margin)
        strategy.backward(loss)
        strategy.step()
        speed += torch.tensor([tokens, time.perf_counter() - began])
        loss_sum += loss.detach().to(torch.float64)  # exactly the float loss.item() gave
        micro_steps += 1
        done = step + 1
        if last_micro:
            _tell(progress, {"step": done})
        if not last_micro or (done % config.eval_every and done != total_steps):
            continue

        # eval, export, checkpoint, report: collectives, so every rank comes here together
        losses = torch.stack([loss_sum, loss_sum.new_tensor(float(micro_steps))])
        dist.all_reduce(losses)
        accuracy, scores = _gold_accuracy(strategy, tokenizer, gold, EVAL_BATCH_FACTOR * micro)
        entry = {"step": done, "loss": float(losses[0] / losses[1]), "gold_accuracy": accuracy}
        history.append(entry)
        loss_sum.zero_()
        micro_steps = 0
        best = best_entry(history)
        if best is entry:
            records = {
                EVAL_FILE: {"step": done, "gold_accuracy": accuracy, "scores": scores},
                TRAINING_FILE: training_record(config, profile),
            }
            strategy.save_pretrained(str(Path(config.out) / "best"), tokenizer, records)
        totals = speed.clone()
        dist.all_reduce(totals)  # tokens of all ranks over their mean time in train steps
        metrics = {
            "step": done,
            "loss": entry["loss"],
            "gold_accuracy": accuracy,
            "best_gold_accuracy": best["gold_accuracy"],
            "best_step": best["step"],
            "tokens_per_s": float(totals[0] / (totals[1] / world)),
            "resumed_from": start,
            "history": history,
        }
        _report(strategy, metrics, {"step": done, "history": history})
        _tell(
            progress,
            {
                "step": done,
                "loss": entry["loss"],
                "gold_accuracy": accuracy,
                "best": best["gold_accuracy"],
            },
        )


class Gold(NamedTuple):
    """This rank's gold pairs, tokenized once, and the gold set's size over all ranks."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    total: int


def _load_model(config: TrainConfig, profile: Profile) -> tuple[Any, Any]:
    """The reward model in fp32 (a new head seeded alike on every rank), its profile applied,
    no dropout.

    fp32 whatever the checkpoint's dtype (transformers 5 would keep a bf16 checkpoint in bf16):
    DeepSpeed's bf16 mode casts the module itself and keeps fp32 master weights from these,
    and the CPU profile runs bf16 autocast over fp32 weights."""
    import torch

    from synpref_core.rm.model import load_reward_model

    model, tokenizer = load_reward_model(config.model, dtype=torch.float32, seed=config.seed)
    freeze_lower_layers(model, profile.trainable_layers)
    disable_dropout(model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer


def _load_gold(
    config: TrainConfig, tokenizer: Any, max_length: int, rank: int, world: int
) -> Gold | None:
    if not config.gold_manifest:
        return None
    table, total = read_shard(config.gold_manifest, rank, world)
    if total < world:
        raise ValueError(f"{config.gold_manifest}: {total} gold pairs for {world} workers")
    return Gold(*encode_pairs(tokenizer, table, max_length), total)


def _setup_strategy(
    config: TrainConfig, profile: Profile, model: Any, world: int, rows: int
) -> tuple[Any, int]:
    """The DeepSpeed strategy wrapping ``model``, and the number of optimizer steps to run."""
    from synpref_core.rm.strategy import (
        DeepSpeedStrategy,
        build_deepspeed_config,
        load_preset,
        lr_multiplier,
    )

    ds_config = build_deepspeed_config(
        load_preset(config.deepspeed_config),
        world_size=world,
        use_gpu=config.use_gpu,
        micro_batch=config.micro_batch,
        grad_accum=config.grad_accum,
        lr=config.lr,
        zero_stage=config.zero_stage,
        bf16=config.bf16,
        default_lr=profile.lr,
        default_bf16=profile.bf16,
    )
    micro = ds_config["train_micro_batch_size_per_gpu"]
    accum = ds_config["gradient_accumulation_steps"]
    per_epoch = rows // micro // accum
    if per_epoch < 1:
        raise ValueError(
            f"{config.train_manifest}: {rows} pairs per worker are fewer than one optimizer step "
            f"(micro_batch {micro} × grad_accum {accum})"
        )
    planned = config.epochs * per_epoch
    schedule = lr_multiplier(config.schedule, config.warmup_steps, planned)
    strategy = DeepSpeedStrategy(ds_config, config.use_gpu, schedule)
    strategy.setup(model)
    return strategy, min(planned, config.max_steps or planned)


def _gold_accuracy(
    strategy: Any, tokenizer: Any, gold: Gold | None, batch: int
) -> tuple[float | None, tuple[list[float], list[float]] | None]:
    """Collective: (accuracy, every gold pair's (chosen, rejected) scores in manifest order),
    each rank scoring its slice with the plain model; ``(None, None)`` without gold."""
    import torch.distributed as dist

    if gold is None:
        return None, None
    world = dist.get_world_size()
    batches = _ceil_div(_ceil_div(gold.total, world), batch)  # the same on every rank
    mine = score_encoded_pairs(
        strategy.unwrap(), tokenizer, gold.chosen, gold.rejected, batch, batches
    )
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    scores = _interleave(gathered)
    return sum(c > r for c, r in zip(*scores, strict=True)) / gold.total, scores


def _report(strategy: Any, metrics: dict, client_state: dict) -> None:
    """Save a DeepSpeed checkpoint (each rank its part) and report it with the metrics; Ray
    Train merges the ranks' parts into one checkpoint directory in its storage."""
    import tempfile

    import ray.train

    with tempfile.TemporaryDirectory() as directory:
        strategy.save_checkpoint(directory, client_state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _tell(progress: Any, event: dict[str, Any]) -> None:
    """Send a progress event to the driver's queue (rank 0 only); never wait for the driver."""
    from ray.util.queue import Full

    if progress is not None:
        with contextlib.suppress(Full):
            progress.put_nowait(event)


class ProgressPrinter:
    """The driver's side of training progress: a thread that turns rank 0's events (each
    step; the mean loss and gold accuracy at each eval) into a progress bar on stderr while Ray
    Train runs, so a long run is never minutes of silence. Workers' own logs stay off the
    console."""

    def __init__(self, enabled: bool):
        from ray.util.queue import Queue

        # 0 CPUs: the queue actor must never take a CPU the training workers wait for.
        self.queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0}) if enabled else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._print, daemon=True)

    def __enter__(self) -> ProgressPrinter:
        if self.queue is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.queue is not None:
            self._stop.set()
            self._thread.join()
            self.queue.shutdown()

    def _print(self) -> None:
        from ray.util.queue import Empty
        from tqdm.auto import tqdm

        bar = tqdm(desc="train", unit="step", total=None)
        shown: dict[str, str] = {}
        while not (self._stop.is_set() and self.queue.empty()):
            try:
                event = self.queue.get(timeout=0.5)
            except Empty:
                continue
            if "total" in event:
                bar.reset(total=event["total"])
                bar.update(event["start"])
            if "step" in event:
                bar.update(event["step"] - bar.n)
            if "loss" in event:
                shown["loss"] = f"{event['loss']:.4f}"
            if event.get("gold_accuracy") is not None:
                shown["gold_acc"] = f"{event['gold_accuracy']:.3f}"
                shown["best"] = f"{event['best']:.3f}"
            bar.set_postfix(shown, refresh=True)
        bar.close()


def _interleave(gathered: list[tuple[list[float], list[float]]]) -> tuple[list, list]:
    """Per-rank scores of rows ``rank::world`` back into manifest order."""
    world = len(gathered)
    total = sum(len(chosen) for chosen, _ in gathered)
    chosen = [gathered[i % world][0][i // world] for i in range(total)]
    rejected = [gathered[i % world][1][i // world] for i in range(total)]
    return chosen, rejected


def _absolute(path: str | None) -> str | None:
    if path is None or "://" in path:
        return path
    return str(Path(path).resolve())


def train_reward_model(
    config: TrainConfig, executor: ExecutorConfig | None = None, progress: bool = True
) -> TrainResult:
    """Train on Ray Train workers (``config.workers``) and return where the best model is.

    Connects to the executor's Ray cluster (or starts a local Ray); a re-run of the same config
    and ``out`` resumes from the latest checkpoint. ``progress``: a bar with the step, the loss
    and the gold accuracy on stderr while it trains."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from synpref_core.executors import ensure_ray

    if not config.train_manifest:
        raise ValueError("TrainConfig.train_manifest is empty: name the pair stage to train on")
    model = config.model if not Path(config.model).exists() else _absolute(config.model)
    config = config.model_copy(
        update={
            "train_manifest": _absolute(config.train_manifest),
            "gold_manifest": _absolute(config.gold_manifest),
            "out": _absolute(config.out),
            "deepspeed_config": _absolute(config.deepspeed_config),
            "model": model,
        }
    )
    ensure_ray(executor or ExecutorConfig(kind="ray"))
    env = None if config.use_gpu else {"env_vars": {"DS_ACCELERATOR": "cpu"}}
    printer = ProgressPrinter(progress)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**config.model_dump(mode="json"), PROGRESS_KEY: printer.queue},
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu),
        run_config=RunConfig(
            name=run_identity(config),
            storage_path=str(Path(config.out) / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            worker_runtime_env=env,
        ),
    )
    with printer:
        result = trainer.fit()
    metrics = result.metrics
    return TrainResult(
        best_dir=str(Path(config.out) / "best"),
        best_gold_accuracy=metrics["best_gold_accuracy"],
        best_step=metrics["best_step"],
        steps=metrics["step"],
        history=[TrainEntry(**h) for h in metrics["history"]],
        tokens_per_s=metrics["tokens_per_s"],
        resumed_from=metrics["resumed_from"],
        checkpoint=result.checkpoint.path if result.checkpoint else None,
    )
