"""Scoring: the reward of both sides of every pair, and p = σ(r_chosen − r_rejected) (DESIGN §4).

The core, :func:`score_sequences`, runs token-id sequences through a reward model with
length-bucketed dynamic batching: sequences are sorted by length and cut into batches whose
``width × rows`` stays within ``token_budget`` tokens, each padded only to its own longest
sequence, so little compute goes to padding. :func:`score_table` scores in-memory pairs with it
(the stage and evaluation use it).

:class:`ScoreStage` (a :class:`~synpref_core.stages.MapStage`) scores the shards of a finished
pair manifest into one Parquet file per shard (``SCORE_SCHEMA``), ``batch_rows`` pairs at a time;
a re-run skips finished shards. The stage's identity holds the model's fingerprint
(:func:`synpref_core.models.model_fingerprint`), so new weights written to the same path are
scored anew rather than skipped. The model is loaded once per process
(:func:`synpref_core.models.cached_model`): the local executor loads it once, each Ray actor once.

Run locally::

    executors.run(ScoreStage(ScoreConfig(pairs="OUT/ingest", out="OUT/scores")), ExecutorConfig())

At scale, ``ExecutorConfig(kind="ray", ray_address=..., cpus_per_shard=C)`` with
``ScoreConfig(actors=N)`` starts N Ray actors of C CPUs each, which load the model once and take
shards until none is left. Threads per process: ``$SYNPREF_TORCH_THREADS`` if set, else the CPUs
the process was given (an actor's ``cpus_per_shard``, a local pool worker's share of the cores),
else torch's default.

On GPUs: ``ScoreConfig(device="auto")`` (the default) runs on CUDA when the process sees a GPU,
else on the CPU. ``dtype="auto"`` is float32 everywhere: bfloat16 is about 4× faster on a CPU
with native bf16 (AMX) but flipped 0.8% of the pairwise decisions of the bundled benchmark pairs
with a trained MiniLM RM (1.4% with the untrained head; all near-ties), above the 0.1% we accept
for a default (``benchmarks/bench_dtype.py``; 2.4% on a 0.5B model on an H100), so it is an
opt-in (``dtype="bfloat16"``) where throughput matters more than near-tie decisions. On Ray,
``num_gpus`` is what each actor reserves (``1``, or ``0.5`` for two actors per GPU); an actor
without it sees no GPU, so ``device="auto"`` puts it on the CPU and ``device="cuda"`` fails when
it loads the model. Raise ``token_budget`` on a GPU until its memory is full (``4096`` is the
CPU's sweet spot), e.g.::

    ScoreConfig(pairs=..., device="cuda", dtype="bfloat16", num_gpus=1, actors=8,
                token_budget=65536)
    ExecutorConfig(kind="ray", ray_address=..., cpus_per_shard=4)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import Field, model_validator

from synpref_core.config import DEFAULT_HOME, ActorConfig
from synpref_core.models import cached_model, model_fingerprint
from synpref_core.rm.model import (
    DEFAULT_BACKBONE,
    encode,
    load_reward_model,
    resolve_backbone,
    trained_max_length,
)
from synpref_core.stages import MapStage

log = logging.getLogger(__name__)

# Padded tokens per forward pass. 4,096 measured fastest for MiniLM on CPU (benchmarks/README.md,
# "Scoring"): bigger batches outgrow the caches. On a GPU, raise it until the device is full.
DEFAULT_TOKEN_BUDGET = 4096
INPUT_COLUMNS = ["pair_id", "conversation", "chosen", "rejected"]
SCORE_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("r_chosen", pa.float64(), nullable=False),
        pa.field("r_rejected", pa.float64(), nullable=False),
        pa.field("p", pa.float64(), nullable=False),  # σ(r_chosen − r_rejected)
        pa.field("chosen_tokens", pa.int32(), nullable=False),  # after truncation
        pa.field("rejected_tokens", pa.int32(), nullable=False),
    ]
)


class ScoreConfig(ActorConfig):
    """What to score with which model. Its hash (less ``out``, ``actors`` and ``num_gpus``) and
    the weights' fingerprint name the output."""

    model: str = Field(DEFAULT_BACKBONE, description="Reward model: a name or a path.")
    max_length: int | None = Field(
        None,
        ge=8,
        description="Tokens per sequence (the start is cut); None: what the model was trained "
        "with (its synpref_training.json), else 256.",
    )
    token_budget: int = Field(
        DEFAULT_TOKEN_BUDGET, ge=8, description="Most tokens (padding included) per forward pass."
    )
    pairs: str = Field(description="Input: a finished pair stage (its directory or manifest).")
    out: str = Field(str(DEFAULT_HOME / "scores"), description="Output directory or URI.")
    batch_rows: int = Field(1024, ge=1, description="Pairs read and scored at a time.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs; auto: CUDA when the process sees a GPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Model weights and compute; auto: float32 (bfloat16 flips near-ties: opt in).",
    )

    @model_validator(mode="after")
    def _budget_fits_a_sequence(self) -> ScoreConfig:
        if self.max_length is not None and self.token_budget < self.max_length:
            raise ValueError(
                f"token_budget ({self.token_budget}) must be at least max_length "
                f"({self.max_length}): a full-length sequence must fit in one batch"
            )
        if self.num_gpus and self.device == "cpu":
            raise ValueError(
                f"num_gpus ({self.num_gpus}) reserves GPUs that device='cpu' leaves idle"
            )
        return self


# -- the core: batching and forward passes ---------------------------------------------------


def plan_batches(lengths: np.ndarray, token_budget: int) -> list[np.ndarray]:
    """Indices of each batch: longest first, ``max length × rows ≤ token_budget``.

    Longest first, so the widest batch runs first and a budget too big for memory fails at
    once. A sequence longer than the budget gets a batch of its own.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches = []
    start = 0
    while start < len(order):
        rows = max(1, token_budget // int(lengths[order[start]]))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def score_sequences(
    model: Any,
    tokenizer: Any,
    sequences: Sequence[Sequence[int]],
    token_budget: int,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The reward of each token-id sequence (float64), in input order; ``on_batch(n)`` after
    each forward pass of ``n`` sequences (progress)."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    if lengths.size and lengths.min() == 0:
        raise ValueError("cannot score an empty token sequence")
    rewards = np.empty(len(sequences), dtype=np.float64)
    device = model.device
    with torch.inference_mode():
        for batch in plan_batches(lengths, token_budget):
            width = int(lengths[batch[0]])  # the longest: batches come sorted
            ids = np.full((len(batch), width), tokenizer.pad_token_id, dtype=np.int64)
            for row, i in enumerate(batch):
                ids[row, : lengths[i]] = sequences[i]
            mask = np.arange(width) < lengths[batch, None]
            logits = model(
                input_ids=torch.from_numpy(ids).to(device),
                attention_mask=torch.from_numpy(mask).to(device, torch.int64),
            ).logits
            rewards[batch] = logits[:, 0].double().cpu().numpy()
            if on_batch is not None:
                on_batch(len(batch))
    return rewards


class PairScores(NamedTuple):
    """Rewards (float64) and token counts (after truncation) of both sides, in input order."""

    r_chosen: np.ndarray
    r_rejected: np.ndarray
    chosen_tokens: list[int]
    rejected_tokens: list[int]


def score_table(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict]],
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_length: int,
    token_budget: int,
    on_batch: Callable[[int], None] | None = None,
) -> PairScores:
    """Score in-memory pairs; both sides share one set of batches. ``on_batch(n)`` is told
    after each forward pass how many responses (of ``2 × pairs``) it scored."""
    chosen_ids = encode(tokenizer, conversations, chosen, max_length)
    rejected_ids = encode(tokenizer, conversations, rejected, max_length)
    rewards = score_sequences(model, tokenizer, chosen_ids + rejected_ids, token_budget, on_batch)
    n = len(chosen_ids)
    return PairScores(
        rewards[:n], rewards[n:], list(map(len, chosen_ids)), list(map(len, rejected_ids))
    )


def preference_probability(r_chosen: np.ndarray, r_rejected: np.ndarray) -> np.ndarray:
    """σ(r_chosen − r_rejected): the Bradley-Terry probability that chosen is preferred."""
    return torch.sigmoid(torch.from_numpy(r_chosen - r_rejected)).numpy()


# -- loading the model once per process -----------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when this process sees a GPU, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device='cuda' but this process sees no CUDA device (on Ray: set ScoreConfig.num_gpus)"
        )
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    """``auto``: float32 (see the module docstring for why bfloat16 is not the default)."""
    return torch.float32 if dtype == "auto" else getattr(torch, dtype)


def cached_reward_model(
    name_or_path: str,
    device: str = "auto",
    dtype: str = "auto",
    fingerprint: str | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode on ``device`` in ``dtype``, loaded at most once per
    process (:func:`~synpref_core.models.cached_model`: new weights at the same path, or another
    device or dtype, replace the copy held). ``fingerprint``: the weights' fingerprint if known."""
    path = resolve_backbone(name_or_path)
    target = resolve_device(device)
    weights = resolve_dtype(dtype)
    version = (fingerprint or model_fingerprint(path), str(target), str(weights).split(".")[-1])

    def load() -> tuple[Any, Any]:
        model, tokenizer = load_reward_model(path, dtype=weights)  # a new head: seed 0
        return model.to(target).eval(), tokenizer

    return cached_model("reward-model", path, version, load)


# -- the stage -------------------------------------------------------------------------------


class ScoreStage(MapStage):
    """One output shard per data file of the input pair manifest, in the same order."""

    name = "score"
    columns = INPUT_COLUMNS
    output_schema = SCORE_SCHEMA
    holds_model = True

    def __init__(self, config: ScoreConfig):
        super().__init__(config, parent=config.pairs)
        self.max_length = config.max_length or trained_max_length(config.model)
        if config.token_budget < self.max_length:
            raise ValueError(
                f"ScoreConfig.token_budget ({config.token_budget}) is below {config.model}'s "
                f"max_length ({self.max_length}): a full-length sequence must fit in one batch"
            )

    def fingerprint_model(self) -> str:
        return model_fingerprint(self.settings.model)

    def load_model(self) -> tuple[Any, Any]:
        score = self.settings
        return cached_reward_model(score.model, score.device, score.dtype, self.model_version)

    def map_batch(self, batch: pa.RecordBatch, model: tuple[Any, Any]) -> pa.Table:
        r_chosen, r_rejected, n_chosen, n_rejected = score_table(
            *model,
            batch.column("conversation").to_pylist(),
            batch.column("chosen").to_pylist(),
            batch.column("rejected").to_pylist(),
            self.max_length,
            self.settings.token_budget,
        )
        columns = {
            "pair_id": batch.column("pair_id"),
            "r_chosen": r_chosen,
            "r_rejected": r_rejected,
            "p": preference_probability(r_chosen, r_rejected),
            "chosen_tokens": n_chosen,
            "rejected_tokens": n_rejected,
        }
        return pa.table(columns, schema=SCORE_SCHEMA)

    def batch_counts(self, batch: pa.RecordBatch, out: pa.Table) -> dict[str, int]:
        tokens = pc.add(pc.sum(out["chosen_tokens"]), pc.sum(out["rejected_tokens"]))
        return {"tokens": tokens.as_py() or 0}
