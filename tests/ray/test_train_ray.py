"""Reward-model training through the real path: Ray Train with 2 CPU workers, DeepSpeed ZeRO-1
on its CPU accelerator (gloo), a tiny real BERT reward model, manifests from the real ingest
(OffsetBias to train on, LLMBar Natural as gold).

Training is deterministic (seeded head, no dropout, seeded data order, fp32, gloo), so a run
resumed after a stop equals an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synpref_core.config import ExecutorConfig, IngestConfig, SourceSpec
from synpref_core.ingest.pipeline import run_ingest
from synpref_core.rm.model import TRAINING_FILE, encode, trained_max_length
from synpref_core.rm.train import TrainConfig, best_entry, train_reward_model
from synpref_core.stages import iter_batches
from tests.conftest import DATA
from tests.rm_helpers import tiny_model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-inputs")
    manifests = {}
    for name, fmt, path in (
        ("train", "offsetbias", DATA / "offsetbias"),
        ("gold", "llmbar", DATA / "llmbar" / "Dataset" / "LLMBar" / "Natural"),
    ):
        config = IngestConfig(
            sources=[SourceSpec(format=fmt, paths=[str(path)])], out=str(root / name)
        )
        manifests[name] = run_ingest(config, ExecutorConfig(kind="local"), progress=False)
    return {**manifests, "model": tiny_model_dir(root)}


def _config(inputs, out: Path, **overrides) -> TrainConfig:
    # 80 pairs / (4 pairs × 2 workers) = 10 steps; eval + checkpoint every 2
    settings = dict(
        train_manifest=inputs["train"],
        gold_manifest=inputs["gold"],
        out=str(out),
        model=str(inputs["model"]),
        profile="full",
        bf16=False,
        micro_batch=4,
        lr=1e-3,
        eval_every=2,
        workers=2,
    )
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory, ray_local):
    return train_reward_model(_config(inputs, tmp_path_factory.mktemp("run") / "rm"))


def _checkpoint_weights(checkpoint: str) -> dict[str, torch.Tensor]:
    """The module weights inside a DeepSpeed checkpoint reported to Ray Train."""
    states = Path(checkpoint) / "state" / "mp_rank_00_model_states.pt"
    return torch.load(states, map_location="cpu", weights_only=False)["module"]


def _plain_weights(directory: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(directory).state_dict()


def test_every_trainable_parameter_changes(trained, inputs):
    result = trained
    assert result.steps == 10 and result.resumed_from == 0 and result.tokens_per_s > 0
    before = _plain_weights(str(inputs["model"]))
    exported = {
        "last": _checkpoint_weights(result.checkpoint),
        "best": _plain_weights(result.best_dir),
    }
    for name, after in exported.items():
        for key, value in before.items():
            if key.endswith("position_ids"):
                continue  # a buffer, not a parameter
            assert not torch.equal(value, after[key].float()), f"{name}: {key} did not change"


def test_best_checkpoint_has_max_gold_accuracy_and_is_not_the_last(trained):
    result = trained
    history = [h.model_dump() for h in result.history]
    assert [h["step"] for h in history] == [2, 4, 6, 8, 10]
    best = best_entry(history)
    assert result.best_step == best["step"] and result.best_gold_accuracy == best["gold_accuracy"]
    assert result.best_gold_accuracy == max(h["gold_accuracy"] for h in history)
    # the situation the selection is for: accuracy on the (different) gold set falls later on
    assert result.best_step < 10 and history[-1]["gold_accuracy"] < result.best_gold_accuracy
    recorded = json.loads((Path(result.best_dir) / "synpref_eval.json").read_text())
    assert recorded["step"] == result.best_step
    training = json.loads((Path(result.best_dir) / TRAINING_FILE).read_text())
    assert training["max_length"] == trained_max_length(result.best_dir) == 256  # full profile
    assert training["profile"] == "full" and training["config"]["seed"] == 0
    best_weights = _plain_weights(result.best_dir)
    last_weights = _checkpoint_weights(result.checkpoint)
    assert not torch.equal(best_weights["classifier.weight"], last_weights["classifier.weight"])


def test_exported_model_loads_with_plain_transformers_and_scores_the_same(trained, inputs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result = trained
    model = AutoModelForSequenceClassification.from_pretrained(result.best_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.best_dir)
    assert tokenizer.truncation_side == "left"  # keeps the response when a pair is too long
    rows = [r for b in iter_batches(inputs["gold"].rsplit("/", 1)[0]) for r in b.to_pylist()]
    conversations = [r["conversation"] for r in rows]
    scores = {}
    for side in ("chosen", "rejected"):
        ids = encode(tokenizer, conversations, [r[side] for r in rows], 256)
        with torch.no_grad():
            scores[side] = [model(input_ids=torch.tensor([i])).logits[0, 0].item() for i in ids]
    recorded = json.loads((Path(result.best_dir) / "synpref_eval.json").read_text())
    assert scores["chosen"] == pytest.approx(recorded["scores"][0], abs=1e-5)
    assert scores["rejected"] == pytest.approx(recorded["scores"][1], abs=1e-5)
    correct = sum(c > r for c, r in zip(scores["chosen"], scores["rejected"], strict=True))
    assert correct / len(rows) == result.best_gold_accuracy


def test_stopped_run_resumes_from_its_checkpoint_and_ends_where_one_run_would(
    trained, inputs, tmp_path
):
    uninterrupted = trained
    out = tmp_path / "rm"
    first = train_reward_model(_config(inputs, out, max_steps=5))  # stops after step 5
    assert first.steps == 5 and [h.step for h in first.history] == [2, 4, 5]

    second = train_reward_model(_config(inputs, out))  # same run, no step limit: resumes
    assert second.resumed_from == 5 and second.steps == 10
    assert [h.step for h in second.history] == [2, 4, 5, 6, 8, 10]  # steps 1-5 not redone
    assert second.history[:3] == first.history
    resumed, straight = (
        _checkpoint_weights(second.checkpoint),
        _checkpoint_weights(uninterrupted.checkpoint),
    )
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)
