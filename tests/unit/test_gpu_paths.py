"""What the GPU paths decide, checked on the CPU (issue 14): the token budget for a device, the
prefetching scorer (the same scores as the plain one), fingerprints cached on disk (re-used on
an unchanged model, recomputed for new weights at the same path), one cached copy of a model,
and models loaded in the precision asked for."""

from __future__ import annotations

import gc
import json
import shutil
import threading
import weakref
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from synpref_core import models
from synpref_core.cli import app
from synpref_core.executors import run
from synpref_core.io.prefetch import prefetched
from synpref_core.models import FINGERPRINT_FILE, model_fingerprint
from synpref_core.rm.model import encode, load_reward_model
from synpref_core.rm.scoring import (
    CPU_TOKEN_BUDGET,
    GPU_MAX_TOKEN_BUDGET,
    ScoreConfig,
    ScoreStage,
    activation_bytes_per_token,
    cached_reward_model,
    choose_token_budget,
    resolve_dtype,
    score_sequences,
    token_budget_for,
)
from synpref_core.stages import load_manifest
from tests.rm_helpers import MAX_LENGTH, tiny_model_dir

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30


# -- the token budget ------------------------------------------------------------------------


def test_the_cpu_keeps_its_measured_budget():
    assert choose_token_budget("cpu", 256) == CPU_TOKEN_BUDGET == 4096
    assert choose_token_budget("cpu", 8192) == 8192  # a full sequence always fits


def test_a_gpu_budget_follows_free_memory_and_the_model_width():
    from transformers import BertConfig, Qwen2Config

    minilm = BertConfig(hidden_size=384, intermediate_size=1536)
    qwen = Qwen2Config(hidden_size=896, intermediate_size=4864)
    small = activation_bytes_per_token(minilm, torch.bfloat16)
    large = activation_bytes_per_token(qwen, torch.bfloat16)
    assert small == 2 * (4 * 384 + 3 * 1536)
    assert large > small
    assert activation_bytes_per_token(minilm, torch.float32) == 2 * small
    # An H100 with ~70 GiB free: both models get the cap, far above the CPU's 4,096.
    assert choose_token_budget("cuda", 512, 70 * GIB, small) == GPU_MAX_TOKEN_BUDGET
    assert choose_token_budget("cuda", 512, 70 * GIB, large) == GPU_MAX_TOKEN_BUDGET
    # Little free memory: a power of two that fits a quarter of it, never below max_length.
    budget = choose_token_budget("cuda", 512, GIB, large)
    assert budget & (budget - 1) == 0 and budget * large <= GIB // 4 < 2 * budget * large
    assert choose_token_budget("cuda", 512, 2**20, large) == 512
    with pytest.raises(ValueError, match="free memory"):
        choose_token_budget("cuda", 512)


def test_an_unset_budget_is_chosen_for_the_device(pairs_dir, tiny, tmp_path):
    config = ScoreConfig(model=tiny, max_length=MAX_LENGTH, pairs=pairs_dir, out=str(tmp_path))
    assert config.token_budget is None
    stage = ScoreStage(config)
    model, _ = stage.load_model()
    assert token_budget_for(model, MAX_LENGTH) == CPU_TOKEN_BUDGET
    assert stage._plan(model) == (CPU_TOKEN_BUDGET, False)  # the CPU: no prefetch thread
    explicit = ScoreStage(config.model_copy(update={"token_budget": 512, "prefetch": True}))
    assert explicit._plan(model) == (512, True)


# -- the prefetching scorer ------------------------------------------------------------------


def test_prefetching_gives_the_plain_scores(pairs_dir, tiny):
    model, tokenizer = cached_reward_model(tiny)
    pairs = pl.read_parquet(sorted(Path(pairs_dir).glob("data/*.parquet"))).head(60)
    sequences = encode(tokenizer, pairs["conversation"].to_list(), pairs["chosen"], MAX_LENGTH)
    sequences += encode(tokenizer, pairs["conversation"].to_list(), pairs["rejected"], MAX_LENGTH)
    seen: list[int] = []
    plain = score_sequences(model, tokenizer, sequences, 4 * MAX_LENGTH, prefetch=False)
    ahead = score_sequences(model, tokenizer, sequences, 4 * MAX_LENGTH, seen.append, True)
    assert len(seen) > 5 and sum(seen) == len(sequences)  # many forward passes, all counted
    np.testing.assert_array_equal(ahead, plain)  # the same batches: bit for bit


def test_the_stage_scores_the_same_ahead_or_not(pairs_dir, tiny, tmp_path):
    def scores(name: str, prefetch: bool) -> tuple[pl.DataFrame, str]:
        out = tmp_path / name
        config = ScoreConfig(
            model=tiny, max_length=MAX_LENGTH, pairs=pairs_dir, out=str(out), batch_rows=16,
            prefetch=prefetch,
        )  # fmt: skip
        manifest = load_manifest(run(ScoreStage(config), progress=False))
        return pl.read_parquet(out / "data"), manifest.run_id

    plain, plain_id = scores("plain", False)
    ahead, ahead_id = scores("ahead", True)
    assert plain.height > 100 and ahead.equals(plain)
    assert ahead_id == plain_id  # how it runs is not what it makes


def test_prefetched_keeps_order_raises_where_it_failed_and_stops_early():
    with prefetched(iter(range(100)), depth=3) as ready:
        assert list(ready) == list(range(100))

    def failing():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"), prefetched(failing(), depth=2) as ready:
        for item in ready:
            got.append(item)
    assert got == [1, 2]

    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    with prefetched(endless(), depth=2) as ready:
        assert next(ready) == 0
    count = len(produced)
    assert not any(t.name == "synpref-prefetch" for t in threading.enumerate())
    assert count <= 5 and len(produced) == count  # it stopped, a few items ahead at most


# -- fingerprints cached on disk -------------------------------------------------------------


def _forget_in_memory() -> None:
    models._DIGESTS.clear()


def test_a_cached_fingerprint_is_reused_and_new_weights_are_hashed_again(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_DIR_ENV, str(tmp_path / "cache"))
    model_dir = tiny_model_dir(tmp_path / "a", seed=0)
    other = tiny_model_dir(tmp_path / "b", seed=1)
    _forget_in_memory()
    first = model_fingerprint(str(model_dir))
    record = json.loads((model_dir / FINGERPRINT_FILE).read_text())
    assert record["digest"] == first and record["directory"] == str(model_dir.resolve())
    assert model_fingerprint(str(model_dir)) == first  # the cache file is not a model file

    # Another process (no in-memory memo) reads the file instead of the weights: a digest
    # planted in the record is what it returns.
    (model_dir / FINGERPRINT_FILE).write_text(json.dumps({**record, "digest": "planted"}))
    _forget_in_memory()
    assert model_fingerprint(str(model_dir)) == "planted"

    # New weights at the same path: sizes or mtimes change, so the record no longer matches.
    shutil.copy(other / "model.safetensors", model_dir / "model.safetensors")
    _forget_in_memory()
    new = model_fingerprint(str(model_dir))
    assert new not in ("planted", first)
    _forget_in_memory()
    assert new == model_fingerprint(str(other))  # same files, same digest (paths aside)


def test_a_model_directory_that_cannot_take_the_cache_uses_the_user_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(models.CACHE_DIR_ENV, str(cache))
    model_dir = tiny_model_dir(tmp_path / "a")
    (model_dir / FINGERPRINT_FILE).mkdir()  # the name is taken: nothing can be written there
    _forget_in_memory()
    digest = model_fingerprint(str(model_dir))
    [record] = list((cache / "fingerprints").glob("*.json"))
    assert json.loads(record.read_text())["digest"] == digest
    _forget_in_memory()
    assert model_fingerprint(str(model_dir)) == digest


# -- one copy per model, in the precision asked for ------------------------------------------


def test_one_copy_of_a_model_whatever_the_precision(tiny):
    fp32, _ = cached_reward_model(tiny, dtype="float32")
    old = weakref.ref(fp32)
    del fp32
    bf16, _ = cached_reward_model(tiny, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    assert [k[-1] for k in models._MODELS if k[1] == tiny] == ["bfloat16"]
    gc.collect()
    assert old() is None  # the float32 copy is gone, not merely out of the cache
    assert cached_reward_model(tiny)[0].dtype == torch.float32  # auto on the CPU: float32


def test_models_load_in_the_precision_asked_for(tmp_path):
    model_dir = tiny_model_dir(tmp_path / "fp32")
    half, tokenizer = load_reward_model(str(model_dir), dtype=torch.bfloat16)
    half.save_pretrained(tmp_path / "bf16")  # a bf16 checkpoint, as GPU training writes
    tokenizer.save_pretrained(tmp_path / "bf16")
    loaded, _ = load_reward_model(str(tmp_path / "bf16"), dtype=torch.float32)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    with pytest.raises(TypeError):
        load_reward_model(str(model_dir))  # no silent default: the caller names a precision
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16  # the documented GPU default
    assert resolve_dtype("float32", "cuda") == torch.float32


def test_eval_compares_float32_with_bfloat16(tmp_path):
    model_dir = tiny_model_dir(tmp_path / "rm")
    args = ["eval", "--model", str(model_dir), "--format", "llmbar", "--max-length", "64"]
    args += ["--device", "cpu", "--compare-dtype", "--json", "--out", str(tmp_path / "eval")]
    args.append(str(REPO / "data" / "llmbar" / "Dataset" / "LLMBar" / "Natural"))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout)["dtype_comparison"]
    assert (comparison["reference"], comparison["other"]) == ("float32", "bfloat16")
    assert comparison["device"] == "cpu" and comparison["pairs"] == 100
    flipped = comparison["flipped"]
    assert comparison["decision_agreement"] == pytest.approx(1 - flipped / 100)
    assert 0 < comparison["max_abs_dp"] < 0.5  # bf16 really rounds; it does not scramble
    assert comparison["mean_abs_dp"] <= comparison["max_abs_dp"]
    assert 0 <= comparison["flipped_near_ties"] <= flipped
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["dtype_comparison"] == comparison

    plain = CliRunner().invoke(app, [*args[:-5], "--json", str(args[-1])])
    assert plain.exit_code == 0 and "dtype_comparison" not in json.loads(plain.stdout)
    bad = CliRunner().invoke(app, [*args[:-1], "--dtype", "int8", args[-1]])
    assert bad.exit_code == 2 and "unknown dtype" in bad.output
