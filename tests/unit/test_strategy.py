"""DeepSpeed strategy choices that depend on the hardware, checked on CPU: the process-group
arguments, and the config settings a single GPU and bf16 change."""

from __future__ import annotations

import torch
from deepspeed.runtime.config import DeepSpeedConfig

from synpref_core.rm.strategy import distributed_init_kwargs, load_preset
from tests.conftest import REPO
from tests.rm_helpers import build_config


def _build(preset, **overrides):
    return build_config(preset, **{"use_gpu": True, **overrides})  # a GPU unless told


def test_process_group_is_gloo_on_cpu_and_nccl_bound_to_the_local_gpu():
    assert distributed_init_kwargs(False, 3, 8) == {"backend": "gloo"}
    assert distributed_init_kwargs(True, 3, 8) == {
        "backend": "nccl",
        "device_id": torch.device("cuda", 3),
    }
    # one rank: not bound (eager NCCL init fails on one GPU in some setups, DeepSpeed #8248)
    assert distributed_init_kwargs(True, 0, 1) == {"backend": "nccl"}


def test_overlap_comm_is_off_on_one_rank_only():
    preset = load_preset(str(REPO / "infra" / "deepspeed" / "zero2-gpu-bf16.json"))
    assert preset["zero_optimization"]["overlap_comm"] is True
    assert _build(preset, world_size=4)["zero_optimization"]["overlap_comm"] is True
    one = _build(preset, world_size=1)
    assert one["zero_optimization"]["overlap_comm"] is False
    assert DeepSpeedConfig(one).zero_config.overlap_comm is False
    # ZeRO-3 turns it on by default: on one rank it is set off explicitly
    assert _build({}, world_size=1, zero_stage=3)["zero_optimization"]["overlap_comm"] is False


def test_gpu_bf16_skips_the_overflow_check_unless_a_preset_asks_for_it():
    assert _build({})["bf16"] == {"enabled": True, "check_grad_overflow": False}
    asked = _build({"bf16": {"enabled": True, "check_grad_overflow": True}})
    assert asked["bf16"]["check_grad_overflow"] is True
    assert _build({}, bf16=False)["bf16"] == {"enabled": False}
    assert _build({}, use_gpu=False)["bf16"] == {"enabled": False}  # CPU: autocast instead
    for name in ("zero2-gpu-bf16.json", "zero3-gpu-bf16.json", "paper-8b.json"):
        built = _build(load_preset(str(REPO / "infra" / "deepspeed" / name)), world_size=64)
        assert DeepSpeedConfig(built).bfloat16_config.check_grad_overflow is False, name
