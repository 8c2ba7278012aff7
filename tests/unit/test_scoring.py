"""Scoring with a tiny real reward model over pairs from the real ingest pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError

from synpref_core import models
from synpref_core.executors import run
from synpref_core.models import model_fingerprint
from synpref_core.rm.model import (
    FALLBACK_MAX_LENGTH,
    TRAINING_FILE,
    encode,
    load_reward_model,
    load_tokenizer,
)
from synpref_core.rm.scoring import (
    SCORE_SCHEMA,
    ScoreConfig,
    ScoreStage,
    cached_reward_model,
    plan_batches,
    score_sequences,
    score_table,
)
from synpref_core.stages import load_manifest
from tests.rm_helpers import MAX_LENGTH, tiny_bert_config, tiny_model_dir


def _pairs(pairs_dir: str, n: int) -> pl.DataFrame:
    return pl.read_parquet(sorted(Path(pairs_dir).glob("data/*.parquet"))).head(n)


def test_batched_rewards_equal_one_sequence_at_a_time(pairs_dir, tiny):
    model, tokenizer = cached_reward_model(tiny)
    pairs = _pairs(pairs_dir, 40)
    sequences = encode(tokenizer, pairs["conversation"].to_list(), pairs["chosen"], MAX_LENGTH)
    sequences += encode(tokenizer, pairs["conversation"].to_list(), pairs["rejected"], MAX_LENGTH)
    assert len({len(s) for s in sequences}) > 10  # widths really differ
    batched = score_sequences(model, tokenizer, sequences, token_budget=4 * MAX_LENGTH)
    with torch.inference_mode():  # no padding, no mask: the reference
        single = [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in sequences]
    assert batched.dtype == np.float64
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5)

    scored = score_table(
        model,
        tokenizer,
        pairs["conversation"].to_list(),
        pairs["chosen"].to_list(),
        pairs["rejected"].to_list(),
        MAX_LENGTH,
        token_budget=1024,
    )
    both = np.concatenate([scored.r_chosen, scored.r_rejected])
    np.testing.assert_allclose(both, single, rtol=0, atol=1e-5)


def test_batches_keep_to_the_token_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=1000)
    batches = plan_batches(lengths, token_budget=1024)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))  # each exactly once
    for batch in batches:
        assert lengths[batch].max() * len(batch) <= 1024
    widths = [lengths[b].max() for b in batches]
    assert widths == sorted(widths, reverse=True)  # sorted: padding only within a bucket
    padding = sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches)
    assert padding < 0.05 * lengths.sum()
    # A sequence longer than the budget still runs, alone.
    assert [len(b) for b in plan_batches(np.array([5, 50, 5]), token_budget=20)] == [1, 2]


def test_config_is_strict():
    with pytest.raises(ValidationError, match="token_budget"):
        ScoreConfig(pairs="x", max_length=512, token_budget=256)
    with pytest.raises(ValidationError, match="extra"):
        ScoreConfig(pairs="x", max_lenght=128)
    with pytest.raises(ValidationError, match="device"):
        ScoreConfig(pairs="x", device="tpu")
    with pytest.raises(ValidationError, match="dtype"):
        ScoreConfig(pairs="x", dtype="int8")
    with pytest.raises(ValidationError, match="num_gpus"):
        ScoreConfig(pairs="x", num_gpus=-1)
    with pytest.raises(ValidationError, match="num_gpus"):
        ScoreConfig(pairs="x", device="cpu", num_gpus=1)
    gpu = ScoreConfig(pairs="x", device="cuda", dtype="bfloat16", num_gpus=0.5)
    assert (gpu.device, gpu.dtype, gpu.num_gpus) == ("cuda", "bfloat16", 0.5)


def test_stage_scores_every_pair_and_reruns_only_missing_shards(pairs_dir, tiny, tmp_path):
    config = ScoreConfig(
        model=tiny,
        max_length=MAX_LENGTH,
        token_budget=512,
        pairs=pairs_dir,
        out=str(tmp_path / "scores"),
        batch_rows=16,  # several record batches per shard
    )
    manifest = load_manifest(run(ScoreStage(config), progress=False))
    pairs_manifest = load_manifest(pairs_dir)
    files = sorted((tmp_path / "scores" / "data").glob("*.parquet"))
    assert manifest.num_shards == pairs_manifest.num_shards == len(files) == 3
    assert manifest.rows == manifest.counts["rows"] == pairs_manifest.rows > 200
    assert manifest.parents == (f"{pairs_dir}/manifest.json",)
    for file in files:
        assert pq.read_schema(file).remove_metadata().equals(SCORE_SCHEMA)

    scores = pl.read_parquet(files)
    pairs = _pairs(pairs_dir, pairs_manifest.rows)
    assert scores["pair_id"].to_list() == pairs["pair_id"].to_list()  # input order, all rows
    diff = scores["r_chosen"].to_numpy() - scores["r_rejected"].to_numpy()
    np.testing.assert_allclose(scores["p"].to_numpy(), 1 / (1 + np.exp(-diff)), rtol=1e-12)
    tokens = scores.select("chosen_tokens", "rejected_tokens").to_numpy()
    assert tokens.max() == MAX_LENGTH and tokens.min() > 0
    assert manifest.counts["tokens"] == tokens.sum()
    model, tokenizer = cached_reward_model(tiny)
    r_chosen, *_ = score_table(
        model,
        tokenizer,
        pairs["conversation"].to_list(),
        pairs["chosen"].to_list(),
        pairs["rejected"].to_list(),
        MAX_LENGTH,
        4096,
    )
    np.testing.assert_allclose(scores["r_chosen"].to_numpy(), r_chosen, rtol=0, atol=1e-5)

    # Remove one finished shard: only it is recomputed, with the same model object.
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    files[1].unlink()
    again = load_manifest(run(ScoreStage(config), progress=False))
    changed = [f.name for f in files if f.stat().st_mtime_ns != stamps[f.name]]
    assert changed == [files[1].name]
    assert again == manifest
    assert pl.read_parquet(files).equals(scores)
    assert cached_reward_model(tiny)[0] is model
    keys = [k for k in models._MODELS if k[1] == tiny]
    assert keys == [("reward-model", tiny, model_fingerprint(tiny), "cpu", "float32")]


def _mtimes(directory: Path) -> dict[str, int]:
    return {f.name: f.stat().st_mtime_ns for f in sorted(directory.glob("data/*.parquet"))}


def test_new_weights_at_the_same_path_are_scored_anew(pairs_dir, tmp_path):
    model_dir = tiny_model_dir(tmp_path / "a", seed=0)
    other = tiny_model_dir(tmp_path / "b", seed=1)
    config = ScoreConfig(
        model=str(model_dir), max_length=MAX_LENGTH, pairs=pairs_dir, out=str(tmp_path / "s")
    )
    first = load_manifest(run(ScoreStage(config), progress=False))
    scores, stamps = pl.read_parquet(tmp_path / "s" / "data"), _mtimes(tmp_path / "s")

    shutil.copytree(other, model_dir, dirs_exist_ok=True)  # new weights, same path
    second = load_manifest(run(ScoreStage(config), progress=False))
    rescored = pl.read_parquet(tmp_path / "s" / "data")
    assert second.run_id != first.run_id
    assert all(_mtimes(tmp_path / "s")[name] != stamp for name, stamp in stamps.items())
    assert rescored["pair_id"].equals(scores["pair_id"])
    assert not np.allclose(rescored["r_chosen"].to_numpy(), scores["r_chosen"].to_numpy())
    model, _ = cached_reward_model(str(model_dir))  # the new weights, in memory too
    reference = load_reward_model(str(other), dtype=torch.float32)[0]
    assert torch.equal(model.classifier.weight, reference.classifier.weight)
    assert len([k for k in models._MODELS if k[1] == str(model_dir)]) == 1  # the old dropped

    # The same weights written again (new mtimes, same bytes): nothing to do.
    stamps = _mtimes(tmp_path / "s")
    shutil.rmtree(model_dir)
    shutil.copytree(other, model_dir)
    assert load_manifest(run(ScoreStage(config), progress=False)) == second
    assert _mtimes(tmp_path / "s") == stamps


def test_scoring_uses_the_max_length_the_model_was_trained_with(pairs_dir, tmp_path):
    model_dir = tiny_model_dir(tmp_path)
    config = ScoreConfig(model=str(model_dir), pairs=pairs_dir, out=str(tmp_path / "s"))
    assert ScoreStage(config).max_length == FALLBACK_MAX_LENGTH  # a model that records none
    record = {"profile": "cpu", "max_length": 24, "config": {}}
    (model_dir / TRAINING_FILE).write_text(json.dumps(record))
    stage = ScoreStage(config)
    assert stage.max_length == 24
    run(stage, progress=False)
    scores = pl.read_parquet(tmp_path / "s" / "data")
    assert scores["chosen_tokens"].max() == scores["rejected_tokens"].max() == 24
    explicit = config.model_copy(update={"max_length": 32})  # an explicit value wins
    assert ScoreStage(explicit).max_length == 32
    with pytest.raises(ValueError, match=r"token_budget .* max_length"):
        ScoreStage(config.model_copy(update={"token_budget": 16}))


def test_explicit_cpu_float32_scores_equal_the_default(pairs_dir, tiny, tmp_path):
    def scores(name: str, **options) -> pl.DataFrame:
        out = str(tmp_path / name)
        config = ScoreConfig(model=tiny, max_length=MAX_LENGTH, pairs=pairs_dir, out=out, **options)
        run(ScoreStage(config), progress=False)
        return pl.read_parquet(Path(out) / "data")

    default = scores("default")
    assert scores("explicit", device="cpu", dtype="float32").equals(default)  # bit for bit
    model, _ = cached_reward_model(tiny)
    assert model.device.type == "cpu" and model.dtype == torch.float32


def _bare_backbone(directory: Path) -> str:
    """A tiny BERT without a classification head, as a pretrained backbone is shipped."""
    from transformers import BertModel

    tokenizer = load_tokenizer()
    config = tiny_bert_config(tokenizer)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_a_new_head_depends_on_the_seed_only(tmp_path):
    backbone = _bare_backbone(tmp_path / "bare")
    torch.manual_seed(1)
    first = load_reward_model(backbone, dtype=torch.float32)[0].classifier.weight
    torch.manual_seed(2)  # another caller state, as in another process
    state = torch.random.get_rng_state()
    second = load_reward_model(backbone, dtype=torch.float32)[0].classifier.weight
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's state is untouched
    assert torch.equal(first, second) and first.abs().sum() > 0
    other = load_reward_model(backbone, dtype=torch.float32, seed=1)[0].classifier.weight
    assert not torch.equal(first, other)
    cached = cached_reward_model(backbone)[0].classifier.weight
    assert torch.equal(cached, first)  # scoring: the seed-0 head, in every process


def test_threads_come_from_the_env_then_the_cpus_given(monkeypatch):
    monkeypatch.delenv(models.THREADS_ENV, raising=False)
    assert models.torch_threads(None) is None  # torch's default
    assert models.torch_threads(0.5) == 1 and models.torch_threads(4.0) == 4
    monkeypatch.setenv(models.THREADS_ENV, "3")
    assert models.torch_threads(1.0) == 3
