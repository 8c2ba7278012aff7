"""DeepSpeed behind one object (ARCHITECTURE principle 4): the training loop calls ``setup``,
``forward``, ``backward``, ``step``, ``save_checkpoint``/``load_checkpoint`` and ``unwrap``, and
never touches the engine.

The DeepSpeed config comes from :func:`build_deepspeed_config`: an optional JSON preset
(``infra/deepspeed/*.json``; keys starting with ``_`` are notes and are dropped) plus the
training settings. Precedence, per setting: a value set in the training config, else the preset's
(``"auto"`` counts as unset, as in Hugging Face's DeepSpeed integration), else the default given.

- CPU (embedded default): DeepSpeed's CPU accelerator (the trainer sets ``DS_ACCELERATOR=cpu``),
  the ``gloo`` backend, ``torch.optim.AdamW`` (DeepSpeed's FusedAdam is a CUDA kernel), and bf16
  as ``torch.autocast`` (fp32 weights, bf16 matmuls: native on CPUs with AVX512-BF16/AMX).
- GPU: NCCL, DeepSpeed's bf16 mode (bf16 weights, fp32 master copy in the optimizer). Each rank
  uses the GPU of its ``LOCAL_RANK`` (set by Ray Train, torchrun, or the caller), as DeepSpeed's
  engine does; a process group this strategy creates is bound to that GPU
  (:func:`distributed_init_kwargs`).
- One GPU (``world_size == 1``): ZeRO shards nothing, so ``overlap_comm`` has nothing to overlap
  and only adds device-wide synchronisations; :func:`build_deepspeed_config` turns it off there.

The learning-rate schedule is a ``torch`` ``LambdaLR`` handed to DeepSpeed (which steps it at
each optimizer step and saves it in checkpoints), so a preset must not carry a ``scheduler``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINT_TAG = "state"  # one tag per checkpoint directory: each report gets a fresh directory
DEFAULT_MICRO_BATCH = 8
DEFAULT_ZERO_STAGE = 1
DEFAULT_GRADIENT_CLIPPING = 1.0


class StrategyError(ValueError):
    """The DeepSpeed settings are inconsistent; the message names the setting."""


def load_preset(path: str | None) -> dict[str, Any]:
    """A DeepSpeed JSON preset without its ``_``-prefixed notes; ``{}`` for ``None``."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StrategyError(f"deepspeed_config {path}: cannot read: {exc}") from exc
    return {key: value for key, value in data.items() if not key.startswith("_")}


def _pick(explicit: Any, preset: Any, default: Any) -> Any:
    if explicit is not None:
        return explicit
    if preset is not None and preset != "auto":
        return preset
    return default


def build_deepspeed_config(
    preset: dict[str, Any],
    *,
    world_size: int,
    use_gpu: bool,
    micro_batch: int | None,
    grad_accum: int | None,
    lr: float | None,
    zero_stage: int | None,
    bf16: bool | None,
    default_lr: float,
    default_bf16: bool,
) -> dict[str, Any]:
    """The DeepSpeed config dict for one run (``None`` settings fall back to preset, default).

    A preset's ``train_batch_size`` (the global batch) is kept when ``grad_accum`` is unset:
    gradient accumulation becomes ``train_batch_size / (micro batch × world size)``.
    """
    if "scheduler" in preset:
        raise StrategyError("deepspeed_config: drop 'scheduler'; set schedule/warmup_steps")
    config = copy.deepcopy(preset)
    micro = _pick(micro_batch, config.get("train_micro_batch_size_per_gpu"), DEFAULT_MICRO_BATCH)
    global_batch = config.pop("train_batch_size", None)
    if grad_accum is None and isinstance(global_batch, int):
        accum, rest = divmod(global_batch, micro * world_size)
        if rest or accum < 1:
            raise StrategyError(
                f"deepspeed_config: train_batch_size {global_batch} is not a multiple of "
                f"micro_batch {micro} × workers {world_size}; set grad_accum"
            )
    else:
        accum = _pick(grad_accum, config.get("gradient_accumulation_steps"), 1)
    config["train_micro_batch_size_per_gpu"] = micro
    config["gradient_accumulation_steps"] = accum

    optimizer = config.setdefault("optimizer", {"type": "AdamW"})
    params = optimizer.setdefault("params", {})
    params["lr"] = _pick(lr, params.get("lr"), default_lr)
    if not use_gpu:
        params["torch_adam"] = True
    zero = config.setdefault("zero_optimization", {})
    zero["stage"] = _pick(zero_stage, zero.get("stage"), DEFAULT_ZERO_STAGE)

    half = _pick(bf16, config.get("bf16", {}).get("enabled"), default_bf16)
    if use_gpu:
        config["bf16"] = {**config.get("bf16", {}), "enabled": bool(half)}
        if half:
            # bf16 has fp32's range and no loss scale: DeepSpeed's overflow check (on by default)
            # only costs a scan of every gradient and a host sync per step under ZeRO-1/2
            # (stage_1_and_2.py step → has_overflow → .item()). A plain torch loop has none.
            config["bf16"].setdefault("check_grad_overflow", False)
    else:
        config["bf16"] = {"enabled": False}
        config["torch_autocast"] = {"enabled": bool(half), "dtype": "bfloat16"}
    if world_size == 1:
        # DeepSpeed 0.19 (runtime/zero/stage_1_and_2.py) with overlap_comm: a device-wide
        # synchronize() after every backward (independent_gradient_partition_epilogue) and a
        # second reduce bucket; on one rank there is no communication for it to hide. Set, not
        # dropped: ZeRO-3 defaults it to on.
        zero["overlap_comm"] = False
    config.setdefault("gradient_clipping", DEFAULT_GRADIENT_CLIPPING)
    config.setdefault("steps_per_print", 2**31 - 1)  # we log ourselves
    config.setdefault("wall_clock_breakdown", False)
    return config


def distributed_init_kwargs(use_gpu: bool, local_rank: int, world_size: int) -> dict[str, Any]:
    """Arguments for ``torch.distributed.init_process_group`` (``env://`` rendezvous) when this
    strategy creates the process group: gloo on CPU; NCCL bound to ``cuda:<local_rank>`` on GPU,
    so collectives and barriers never guess the rank's device (NCCL warns such a guess may
    hang). A single rank is not bound: binding makes NCCL create its communicator eagerly,
    which fails on one GPU in some setups (DeepSpeed issue #8248; DeepSpeed 0.19 skips it too,
    ``comm/torch.py`` ``init_process_group``)."""
    if not use_gpu:
        return {"backend": "gloo"}
    import torch

    kwargs: dict[str, Any] = {"backend": "nccl"}
    if world_size > 1:
        kwargs["device_id"] = torch.device("cuda", local_rank)
    return kwargs


def lr_multiplier(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor at optimizer step ``s``: linear warm-up over ``warmup_steps``, then constant
    (``constant``) or a linear decay reaching 0 at ``total_steps`` (``linear``)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
        return 1.0

    return factor


class DeepSpeedStrategy:
    """One DeepSpeed engine: setup, forward/backward/step, checkpoints, and the plain model."""

    def __init__(
        self,
        config: dict[str, Any],
        use_gpu: bool,
        schedule: Callable[[int], float] | None = None,
    ):
        self.config = config
        self.use_gpu = use_gpu
        self.schedule = schedule
        self.engine: Any = None
        self.local_rank = 0

    @property
    def zero_stage(self) -> int:
        return int(self.config.get("zero_optimization", {}).get("stage", 0))

    @property
    def micro_batch(self) -> int:
        return int(self.config["train_micro_batch_size_per_gpu"])

    @property
    def grad_accum(self) -> int:
        return int(self.config["gradient_accumulation_steps"])

    def setup(self, model: Any) -> None:
        """Join (or start) the process group and wrap ``model``; only its parameters with
        ``requires_grad`` are optimised (frozen layers stay out of the optimizer)."""
        import deepspeed
        import torch
        import torch.distributed as dist

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        if self.use_gpu:
            self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(self.local_rank)
            # Ray Train has already created the group (without a device; the barriers below
            # name it instead); elsewhere (torchrun, benchmarks/gpu_training.py) create it bound
            # to this rank's GPU, and DeepSpeed adopts it.
            if not dist.is_initialized():
                world = int(os.environ.get("WORLD_SIZE", "1"))
                dist.init_process_group(
                    **distributed_init_kwargs(True, self.local_rank, world), init_method="env://"
                )
        deepspeed.init_distributed(dist_backend="nccl" if self.use_gpu else "gloo")
        trainable = [p for p in model.parameters() if p.requires_grad]

        def scheduler(optimizer: Any) -> Any:
            return torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)

        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=trainable,
            config=self.config,
            lr_scheduler=scheduler if self.schedule else None,
        )

    @property
    def device(self) -> Any:
        return self.engine.device

    @property
    def rank(self) -> int:
        return self.engine.global_rank

    def forward(self, **batch: Any) -> Any:
        return self.engine(**batch)

    def backward(self, loss: Any) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        """Optimizer step at gradient-accumulation boundaries; a no-op in between."""
        self.engine.step()

    def unwrap(self) -> Any:
        """The Hugging Face model inside the engine (weights are updated in place)."""
        return self.engine.module

    def save_checkpoint(self, directory: str, client_state: dict[str, Any]) -> None:
        """Collective: every rank writes its part (model on rank 0, optimizer shards)."""
        self.engine.save_checkpoint(directory, tag=CHECKPOINT_TAG, client_state=client_state)

    def load_checkpoint(self, directory: str) -> dict[str, Any]:
        """Collective: restore model, optimizer and schedule; return the client state."""
        path, client_state = self.engine.load_checkpoint(directory, tag=CHECKPOINT_TAG)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")
        return client_state

    def save_pretrained(
        self, directory: str, tokenizer: Any, records: dict[str, dict] | None = None
    ) -> None:
        """Collective: rank 0 writes a plain Hugging Face directory (model, tokenizer and one
        JSON file per ``records`` entry, by file name), atomically replacing ``directory``."""
        import deepspeed
        import torch.distributed as dist

        model = self.unwrap()
        params = list(model.parameters()) if self.zero_stage == 3 else []
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=bool(params)):
            if self.rank == 0:
                _write_hf_dir(Path(directory), model, tokenizer, records or {})
        dist.barrier(device_ids=[self.local_rank] if self.use_gpu else None)


def _write_hf_dir(target: Path, model: Any, tokenizer: Any, records: dict[str, dict]) -> None:
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name, record in records.items():
        (tmp / name).write_text(json.dumps(record))
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
