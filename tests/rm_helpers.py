"""A tiny real reward model for tests: a 2-layer BERT built from a config (random weights) with
the bundled MiniLM tokenizer, saved as a plain Hugging Face directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from synpref_core.rm.model import load_tokenizer

# Scoring tests' max length: short, so many sequences are truncated and batches get several widths.
MAX_LENGTH = 64


def tiny_bert_config(tokenizer: Any, **extra: Any) -> Any:
    """A 2-layer, 32-wide BERT config over the bundled MiniLM tokenizer's vocabulary."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        **extra,
    )


def tiny_model_dir(directory: Path, seed: int = 0) -> Path:
    from transformers import BertForSequenceClassification

    path = directory / "tiny-rm"
    if (path / "config.json").exists():
        return path
    tokenizer = load_tokenizer()
    torch.manual_seed(seed)
    config = tiny_bert_config(
        tokenizer,
        max_position_embeddings=512,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_config(preset: dict, **overrides: Any) -> dict:
    """``build_deepspeed_config`` of ``preset`` with the CPU settings of the config tests (two
    workers, nothing set in the training config), ``overrides`` replacing any of them."""
    from synpref_core.rm.strategy import build_deepspeed_config

    settings = dict(
        world_size=2,
        use_gpu=False,
        micro_batch=None,
        grad_accum=None,
        lr=None,
        zero_stage=None,
        bf16=None,
        default_lr=1e-4,
        default_bf16=True,
    )
    return build_deepspeed_config(preset, **{**settings, **overrides})
