"""Reward-model training pieces without Ray: the loss, the DeepSpeed config and its presets,
profiles, data order, checkpoint selection, scoring, and MLflow registration."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from synpref_core import tracking as track
from synpref_core.config import (
    ExecutorConfig,
    IngestConfig,
    SourceSpec,
    TrackingConfig,
    config_hash,
)
from synpref_core.rm.data import (
    encode_pairs,
    epoch_order,
    micro_batches,
    pair_lengths,
    read_shard,
    score_encoded_pairs,
)
from synpref_core.rm.loss import bt_loss
from synpref_core.rm.registry import register_model
from synpref_core.rm.strategy import (
    StrategyError,
    load_preset,
    lr_multiplier,
)
from synpref_core.rm.train import (
    TrainConfig,
    TrainEntry,
    TrainResult,
    _interleave,
    _load_model,
    best_entry,
    freeze_lower_layers,
    resolve_profile,
    run_identity,
)
from tests.conftest import DATA, REPO
from tests.rm_helpers import build_config, tiny_model_dir

PRESETS = sorted((REPO / "infra" / "deepspeed").glob("*.json"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; on a shared 2-core box two threads spin against
    other processes (100× slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- loss ------------------------------------------------------------------------------------


def test_bt_loss_matches_hand_computed_values():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # gaps 1 and -1: (log(1 + e^-1) + log(1 + e^1)) / 2
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2
    assert bt_loss(chosen, rejected).item() == pytest.approx(expected, abs=1e-6)
    # margin 0.5: gaps 0.5 and -1.5
    expected = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(1.5))) / 2
    assert bt_loss(chosen, rejected, 0.5).item() == pytest.approx(expected, abs=1e-6)
    per_pair = bt_loss(chosen, rejected, torch.tensor([0.5, 0.0])).item()
    assert per_pair == pytest.approx((math.log1p(math.exp(-0.5)) + math.log1p(math.e)) / 2)


def test_bt_loss_is_stable_for_large_gaps():
    loss = bt_loss(torch.tensor([0.0, 200.0]), torch.tensor([200.0, 0.0]))
    assert loss.item() == pytest.approx(100.0)  # (200 + 0) / 2, not inf
    chosen = torch.tensor([0.0], requires_grad=True)
    bt_loss(chosen, torch.tensor([200.0])).backward()
    assert chosen.grad.item() == pytest.approx(-1.0)


# -- config and profiles ---------------------------------------------------------------------


def test_train_config_forbids_unknown_fields_and_names_them():
    with pytest.raises(ValidationError, match="learning_rate"):
        TrainConfig(train_manifest="x", learning_rate=1e-5)
    with pytest.raises(ValidationError, match="schedule"):
        TrainConfig(train_manifest="x", schedule="cosine")


def test_profiles_resolve_by_device_and_explicit_fields_win():
    cpu = resolve_profile(TrainConfig(train_manifest="x"))
    assert (cpu.max_length, cpu.trainable_layers) == (96, 1)
    full = resolve_profile(TrainConfig(train_manifest="x", use_gpu=True))
    assert (full.max_length, full.trainable_layers, full.bf16) == (256, None, True)
    mine = resolve_profile(TrainConfig(train_manifest="x", max_length=64, trainable_layers=0))
    assert (mine.max_length, mine.trainable_layers) == (64, 0)


def test_run_identity_ignores_output_and_step_limit_only():
    base = TrainConfig(train_manifest="x")
    same = base.model_copy(update={"out": "elsewhere", "max_steps": 5})
    assert run_identity(same) == run_identity(base)
    assert run_identity(base.model_copy(update={"seed": 1})) != run_identity(base)


def test_training_loads_a_bf16_checkpoint_in_fp32(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tiny, bf16_dir = tiny_model_dir(tmp_path), tmp_path / "bf16-rm"
    AutoModelForSequenceClassification.from_pretrained(tiny).to(torch.bfloat16).save_pretrained(
        bf16_dir
    )
    AutoTokenizer.from_pretrained(tiny).save_pretrained(bf16_dir)
    config = TrainConfig(model=str(bf16_dir), profile="full")
    model, _ = _load_model(config, resolve_profile(config))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_freeze_lower_layers_trains_top_blocks_and_head(tmp_path):
    from transformers import AutoModelForSequenceClassification

    path = tiny_model_dir(tmp_path)

    def frozen(layers):
        model = AutoModelForSequenceClassification.from_pretrained(path)
        freeze_lower_layers(model, layers)
        return model

    model = frozen(1)
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert all(p.requires_grad for p in model.bert.pooler.parameters())
    assert all(p.requires_grad for p in model.bert.encoder.layer[1].parameters())
    assert not any(p.requires_grad for p in model.bert.encoder.layer[0].parameters())
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())
    model = frozen(0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }
    assert all(p.requires_grad for p in frozen(None).parameters())


# -- DeepSpeed config ------------------------------------------------------------------------


def test_deepspeed_config_precedence_explicit_then_preset_then_default():
    preset = {
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-6}},
        "zero_optimization": {"stage": 2},
        "train_micro_batch_size_per_gpu": "auto",
    }
    built = build_config(preset)
    assert built["optimizer"]["params"]["lr"] == 3e-6  # the preset's
    assert built["zero_optimization"]["stage"] == 2
    assert built["train_micro_batch_size_per_gpu"] == 8  # "auto": the default
    built = build_config(preset, lr=1e-5, zero_stage=1, micro_batch=4, grad_accum=3)
    assert built["optimizer"]["params"]["lr"] == 1e-5
    assert built["zero_optimization"]["stage"] == 1
    assert (built["train_micro_batch_size_per_gpu"], built["gradient_accumulation_steps"]) == (4, 3)
    optimizer = build_config({})["optimizer"]
    assert optimizer == {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}}


def test_deepspeed_config_cpu_autocast_and_gpu_bf16():
    cpu = build_config({})
    assert cpu["bf16"] == {"enabled": False}
    assert cpu["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert cpu["optimizer"]["params"]["torch_adam"] is True  # FusedAdam is CUDA-only
    gpu = build_config({}, use_gpu=True, bf16=False)
    assert gpu["bf16"] == {"enabled": False} and "torch_autocast" not in gpu
    assert "torch_adam" not in gpu["optimizer"]["params"]


def test_paper_preset_keeps_its_global_batch_on_any_divisible_world_size():
    paper = load_preset(str(REPO / "infra" / "deepspeed" / "paper-8b.json"))
    assert "_comment" not in paper
    for world, accum in ((64, 160), (8, 1280)):
        built = build_config(paper, world_size=world, use_gpu=True)
        assert (
            built["train_micro_batch_size_per_gpu"] * built["gradient_accumulation_steps"] * (world)
            == 10_240
            and built["gradient_accumulation_steps"] == accum
        )
        assert built["optimizer"]["params"]["lr"] == 3e-6 and built["bf16"]["enabled"]
        assert built["zero_optimization"]["stage"] == 1
    with pytest.raises(StrategyError, match="train_batch_size"):
        build_config(paper, world_size=48, use_gpu=True)
    with pytest.raises(StrategyError, match="scheduler"):
        build_config({"scheduler": {"type": "WarmupLR"}})


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_is_a_valid_deepspeed_config(preset):
    from deepspeed.runtime.config import DeepSpeedConfig

    use_gpu = "gpu" in preset.name or "paper" in preset.name
    built = build_config(load_preset(str(preset)), world_size=1, use_gpu=use_gpu)
    parsed = DeepSpeedConfig(built)
    assert parsed.train_batch_size == (
        built["train_micro_batch_size_per_gpu"] * built["gradient_accumulation_steps"]
    )


def test_lr_multiplier_warmup_then_constant_or_linear_decay():
    constant = lr_multiplier("constant", 3, 10)
    assert [constant(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    linear = lr_multiplier("linear", 0, 4)
    assert [linear(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


# -- data order, selection, scoring ----------------------------------------------------------


def test_micro_batches_are_deterministic_and_resume_mid_epoch():
    lengths = torch.arange(50, dtype=torch.float64).numpy()[::-1].copy()
    full = list(micro_batches(lengths, micro=4, accum=2, seed=7, start_step=0, total_steps=12))
    per_epoch = 50 // 4 // 2  # 6 steps, 48 of 50 rows
    assert len(full) == 12 * 2 and [s for s, _, _ in full][:4] == [0, 0, 1, 1]
    assert [last for _, last, _ in full][:4] == [False, True, False, True]
    epoch0 = [i for s, _, rows in full if s < per_epoch for i in rows]
    assert len(epoch0) == len(set(epoch0)) == 48
    resumed = list(micro_batches(lengths, micro=4, accum=2, seed=7, start_step=5, total_steps=12))
    assert resumed == full[5 * 2 :]
    assert full == list(micro_batches(lengths, 4, 2, 7, 0, 12))


def test_epoch_order_sorts_lengths_within_windows():
    lengths = torch.rand(200, generator=torch.Generator().manual_seed(0)).double().numpy()
    order = epoch_order(lengths, micro=4, usable=192, seed=0, epoch=0)
    assert sorted(order.tolist()) == sorted(set(order.tolist())) and len(order) == 192
    window = 4 * 16
    for first in range(0, 192, window):
        chunk = lengths[order[first : first + window]]
        assert (chunk[:-1] >= chunk[1:]).all()
    assert not (order == epoch_order(lengths, 4, 192, 0, 1)).all()  # each epoch reshuffles


def test_pair_lengths_counts_history_and_longer_side():
    table = pa.table(
        {
            "conversation": [[{"role": "user", "content": "abc"}], []],
            "chosen": ["hello", "x"],
            "rejected": ["hi", "four"],
        }
    )
    assert pair_lengths(table).tolist() == [8.0, 4.0]


def test_best_entry_is_first_max_gold_accuracy_else_last():
    history = [
        {"step": 2, "loss": 0.7, "gold_accuracy": 0.5},
        {"step": 4, "loss": 0.6, "gold_accuracy": 0.7},
        {"step": 6, "loss": 0.5, "gold_accuracy": 0.6},
        {"step": 8, "loss": 0.4, "gold_accuracy": 0.7},
    ]
    assert best_entry(history)["step"] == 4
    assert best_entry([{**h, "gold_accuracy": None} for h in history])["step"] == 8
    assert best_entry([]) is None


def test_interleave_restores_manifest_order():
    gathered = [([0.0, 2.0, 4.0], [10.0, 12.0, 14.0]), ([1.0, 3.0], [11.0, 13.0])]
    assert _interleave(gathered) == ([0.0, 1.0, 2.0, 3.0, 4.0], [10.0, 11.0, 12.0, 13.0, 14.0])


def _ingest(tmp_path: Path, fmt: str, path: Path, name: str) -> str:
    config = IngestConfig(
        sources=[SourceSpec(format=fmt, paths=[str(path)])], out=str(tmp_path / name)
    )
    from synpref_core.ingest.pipeline import run_ingest

    return run_ingest(config, ExecutorConfig(kind="local"), progress=False)


def test_score_pairs_batches_by_length_but_returns_pairs_in_order(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from synpref_core.rm.model import load_tokenizer

    manifest = _ingest(tmp_path, "offsetbias", DATA / "offsetbias", "ob")
    table, total = read_shard(manifest, 0, 1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir(tmp_path)).eval()
    tokenizer = load_tokenizer(str(tiny_model_dir(tmp_path)))
    chosen, rejected = encode_pairs(tokenizer, table, 64)
    got = score_encoded_pairs(
        model, tokenizer, chosen, rejected, batch=7, batches=20
    )  # 8 spare passes
    with torch.no_grad():
        one = [model(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in chosen]
    assert len(got[0]) == total == 80
    assert got[0] == pytest.approx(one, abs=1e-5)


# -- MLflow ----------------------------------------------------------------------------------


def _result(best_dir: Path) -> TrainResult:
    history = [
        TrainEntry(step=2, loss=0.69, gold_accuracy=0.5),
        TrainEntry(step=4, loss=0.6, gold_accuracy=0.6),
    ]
    return TrainResult(
        best_dir=str(best_dir),
        best_gold_accuracy=0.6,
        best_step=4,
        steps=4,
        history=history,
        tokens_per_s=100.0,
        resumed_from=0,
        checkpoint=None,
    )


def test_register_model_logs_run_and_registers_plain_hf_directory(tmp_path):
    import mlflow
    from transformers import AutoModelForSequenceClassification

    manifest = _ingest(tmp_path, "offsetbias", DATA / "offsetbias", "ob")
    config = TrainConfig(train_manifest=manifest.rsplit("/", 1)[0], out=str(tmp_path / "rm"))
    result = _result(tiny_model_dir(tmp_path))
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = register_model(result, config, config.train_manifest, tracking, name="rm-test")
    assert version == 1
    assert register_model(result, config, config.train_manifest, tracking, name="rm-test") == 2
    assert mlflow.active_run() is None  # its own runs, ended

    client = mlflow.MlflowClient()
    registered = client.get_model_version("rm-test", "1")
    assert registered.tags["synpref.train_manifest"] == manifest
    assert registered.tags["synpref.config_hash"] == config_hash(config)
    assert "synpref.gold_manifest" not in registered.tags
    run = client.get_run(registered.run_id)
    assert run.data.params["lr"] == "null" and run.data.tags["synpref.best_step"] == "4"
    accuracy = client.get_metric_history(run.info.run_id, "gold_accuracy")
    assert [(m.step, m.value) for m in accuracy] == [(2, 0.5), (4, 0.6)]
    local = mlflow.artifacts.download_artifacts(f"models:/rm-test/{version}")
    model = AutoModelForSequenceClassification.from_pretrained(local)
    assert model.config.num_labels == 1
    assert not (Path(local) / "MLmodel").exists()  # the plain HF files, nothing added


def test_register_model_logs_into_the_active_run_and_leaves_it_open(tmp_path):
    """As in the train_rm flow: the flow's run holds its own config.json and params; the model
    goes into that run without touching them, tagged with both manifests."""
    import mlflow
    from transformers import AutoModelForSequenceClassification

    train = _ingest(tmp_path, "offsetbias", DATA / "offsetbias", "train")
    gold = _ingest(tmp_path, "llmbar", DATA / "llmbar" / "Dataset" / "LLMBar" / "Natural", "gold")
    config = TrainConfig(train_manifest=train, gold_manifest=gold, out=str(tmp_path / "rm"))
    best = tiny_model_dir(tmp_path)
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    flow_config = {"out": str(tmp_path), "training": {"lr": None}}
    with track.start_run(tracking, run_name="train_rm") as outer:
        mlflow.log_params({"out": str(tmp_path)})
        mlflow.log_dict(flow_config, "config.json")
        version = register_model(
            _result(best), config, train, tracking, name="rm-flow", gold_manifest=gold
        )
        assert mlflow.active_run().info.run_id == outer.info.run_id  # not ended
    run_id = outer.info.run_id

    client = mlflow.MlflowClient()
    registered = client.get_model_version("rm-flow", str(version))
    assert registered.run_id == run_id
    expected = {
        "synpref.train_manifest": train,
        "synpref.gold_manifest": gold,
        "synpref.config_hash": config_hash(config),
    }
    assert expected.items() <= registered.tags.items()
    logged = client.get_logged_model(registered.source.removeprefix("models:/"))
    assert logged.source_run_id == run_id and expected.items() <= logged.tags.items()
    assert [r.info.run_id for r in client.search_runs([outer.info.experiment_id])] == [run_id]
    run = client.get_run(run_id)
    assert run.data.params["out"] == str(tmp_path)  # the flow's, untouched
    assert run.data.params["rm.out"] == config.out
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/config.json") == flow_config
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/rm/config.json")["gold_manifest"] == gold
    artifacts = [a.path for a in client.list_artifacts(run_id, "manifests/train")]
    assert artifacts == ["manifests/train/manifest.json"]

    local = mlflow.artifacts.download_artifacts(f"models:/rm-flow/{version}")
    model = AutoModelForSequenceClassification.from_pretrained(local)
    reference = AutoModelForSequenceClassification.from_pretrained(best)
    assert torch.equal(model.classifier.weight, reference.classifier.weight)


def test_resolve_model_finds_the_latest_version_or_says_how_to_make_one(tmp_path):
    from synpref_core.rm.registry import ModelNotFoundError, resolve_model

    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    cache = tmp_path / "cache"
    assert resolve_model("some/dir", "rm-x", tracking, cache) == "some/dir"  # a path: as given
    with pytest.raises(ModelNotFoundError, match="make flow-train-rm"):
        resolve_model(None, "rm-x", tracking, cache)
    manifest = _ingest(tmp_path, "offsetbias", DATA / "offsetbias", "ob")
    config = TrainConfig(train_manifest=manifest, out=str(tmp_path / "rm"))
    result = _result(tiny_model_dir(tmp_path))
    for _ in range(2):
        register_model(result, config, manifest, tracking, name="rm-x")
    latest = resolve_model(None, "rm-x", tracking, cache)
    assert Path(latest) == (cache / "rm-x-2").resolve() and (Path(latest) / "config.json").exists()
    first = resolve_model("models:/rm-x/1", "rm-x", tracking, cache)
    assert Path(first).name == "rm-x-1"
