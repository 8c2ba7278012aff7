"""benchmarks/gpu_training.py's CPU smoke run: every mode (plain torch and each DeepSpeed preset
through DeepSpeedStrategy) trains a tiny real model on the same batches in its own process."""

from __future__ import annotations

import json

import pytest

from benchmarks.gpu_training import (
    MODES,
    batches_from_pairs,
    deepspeed_config,
    random_batches,
    run_training_bench,
)
from synpref_core.config import ExecutorConfig, IngestConfig, SourceSpec
from synpref_core.ingest.pipeline import run_ingest
from tests.conftest import DATA
from tests.rm_helpers import tiny_model_dir


def test_every_mode_trains_on_cpu_and_reports_throughput(tmp_path):
    batches = random_batches(vocab_size=1000, pairs=2, length=16, count=2, seed=0)
    assert batches == random_batches(vocab_size=1000, pairs=2, length=16, count=2, seed=0)
    batches_file = tmp_path / "batches.json"
    batches_file.write_text(json.dumps(batches))

    # Plain torch and ZeRO-3 (the path unlike the CPU training tests' ZeRO-1): each mode is a
    # process importing DeepSpeed (~15 s of CI here); the others run ZeRO-1/2's optimizer,
    # which tests/unit/test_train.py trains with, and differ only in the preset they resolve
    # (test_deepspeed_modes_resolve_presets_for_one_rank).
    modes = ("torch-amp", "zero3")
    assert set(modes) <= set(MODES)
    result = run_training_bench(
        str(tiny_model_dir(tmp_path)), str(batches_file), modes, steps=2, warmup=1, device="cpu"
    )

    assert set(result["modes"]) == set(modes)
    errors = {mode: r["error"] for mode, r in result["modes"].items() if "error" in r}
    assert not errors
    for r in result["modes"].values():
        assert r["tokens_per_s"] > 0 and r["peak_memory_gib"] is None
    assert result["modes"]["torch-amp"]["vs_torch_amp"] == 1.0
    assert result["pairs_per_batch"] == 2 and result["device"] == "cpu"
    # the same model, seed and batches: every mode starts from the same loss
    losses = [r["loss"] for r in result["modes"].values()]
    assert max(losses) - min(losses) < 0.05
    json.dumps(result)  # JSON-able as documented


def test_deepspeed_modes_resolve_presets_for_one_rank():
    zero2 = deepspeed_config("zero2", use_gpu=True, pairs=8)
    assert zero2["zero_optimization"]["stage"] == 2
    assert zero2["zero_optimization"]["overlap_comm"] is False  # one rank
    assert zero2["bf16"] == {"enabled": True, "check_grad_overflow": False}
    before = deepspeed_config("zero2-before", use_gpu=True, pairs=8)
    assert before["zero_optimization"]["overlap_comm"] is True
    assert before["bf16"]["check_grad_overflow"] is True
    assert deepspeed_config("zero0", use_gpu=True, pairs=8)["zero_optimization"]["stage"] == 0
    assert deepspeed_config("zero3", use_gpu=False, pairs=8)["torch_autocast"]["enabled"]


def test_batches_from_a_pair_stage_are_tokenised_as_training_does(tmp_path):
    config = IngestConfig(
        sources=[SourceSpec(format="offsetbias", paths=[str(DATA / "offsetbias")])],
        out=str(tmp_path / "pairs"),
    )
    stage = run_ingest(config, ExecutorConfig(kind="local"), progress=False)
    batches = batches_from_pairs(str(tiny_model_dir(tmp_path)), stage, 32, 4, count=3)
    assert [len(b["chosen"]) for b in batches] == [4, 4, 4]
    assert all(len(b["chosen"]) == len(b["rejected"]) for b in batches)
    assert max(len(ids) for b in batches for ids in b["chosen"] + b["rejected"]) <= 32
    with pytest.raises(ValueError, match="one of them"):
        run_training_bench("unused", batches, pairs_dir=stage)
