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
else on the CPU. On Ray, ``num_gpus`` is what each actor reserves (``1``, or ``0.5`` for two
actors per GPU); an actor without it sees no GPU, so ``device="auto"`` puts it on the CPU and
``device="cuda"`` fails when it loads the model. What changes on a GPU, each overridable:

- **Precision** (``dtype="auto"``): bfloat16 on CUDA, float32 on the CPU. bf16 moves some
  pairwise decisions that sit on a tie: 2.4% of them on a 0.5B model on an H100 (largest |Δp|
  0.012), 0.8% of the bundled benchmark pairs with a trained MiniLM RM on the CPU
  (``benchmarks/bench_dtype.py``). On a GPU, where bf16 is the precision the ``full`` profile
  trains in and float32 costs 2-4× the time, the default takes that trade; on the CPU (no native
  bf16 on most machines, where bf16 is slower) it does not. ``synpref eval --compare-dtype``
  measures both on your model and pairs: decision agreement and |Δp|.
- **Token budget** (``token_budget=None``): padded tokens per forward pass, chosen from the
  resolved device (:func:`choose_token_budget`): 4,096 on the CPU (its measured optimum: bigger
  batches outgrow the caches), and on a GPU a quarter of the memory free after loading the model
  divided by the model's activation bytes per token, as a power of two, at most 65,536
  (``GPU_MAX_TOKEN_BUDGET``: the H100's measured optimum for MiniLM and a 0.5B model).
- **Prefetching** (``prefetch=None``): on a GPU a background thread reads, renders and tokenises
  the next batch of pairs and pads the next forward pass's tensors into pinned memory while the
  current one runs; copies are non-blocking and the rewards come back once per batch of pairs,
  not once per forward pass, so the GPU does not wait on the CPU. On the CPU the thread would
  only take cores from the model, so it is off.

For example::

    ScoreConfig(pairs=..., num_gpus=1, actors=8)   # cuda, bf16, budget from memory, prefetch
    ExecutorConfig(kind="ray", ray_address=..., cpus_per_shard=4)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import Field, model_validator

from synpref_core.config import DEFAULT_HOME, ActorConfig
from synpref_core.io.prefetch import prefetched
from synpref_core.models import cached_model, model_fingerprint
from synpref_core.rm.model import (
    DEFAULT_BACKBONE,
    encode_sides,
    load_reward_model,
    resolve_backbone,
    trained_max_length,
)
from synpref_core.stages import MapStage

log = logging.getLogger(__name__)

# Padded tokens per forward pass (choose_token_budget). 4,096 measured fastest for MiniLM on CPU
# (benchmarks/README.md, "Scoring"): bigger batches outgrow the caches. On an H100, 65,536 was
# the best measured for MiniLM and a 0.5B model (issue 14): beyond it batches gain nothing and
# the widest batch (run first) needs more memory.
CPU_TOKEN_BUDGET = 4096
GPU_MAX_TOKEN_BUDGET = 65536
GPU_MEMORY_SHARE = 0.25  # of the memory free after loading, for one forward pass's activations
PREFETCH_DEPTH = 2  # padded forward passes (and batches of pairs) made ahead on a GPU
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
    token_budget: int | None = Field(
        None,
        ge=8,
        description="Most tokens (padding included) per forward pass; None: chosen for the "
        "device (CPU 4,096; GPU: from free memory and the model's width, at most 65,536).",
    )
    pairs: str = Field(description="Input: a finished pair stage (its directory or manifest).")
    out: str = Field(str(DEFAULT_HOME / "scores"), description="Output directory or URI.")
    batch_rows: int = Field(1024, ge=1, description="Pairs read and scored at a time.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs; auto: CUDA when the process sees a GPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Model weights and compute; auto: bfloat16 on CUDA, float32 on CPU."
    )
    prefetch: bool | None = Field(
        None,
        description="Tokenise and pad ahead in a background thread while the model runs; "
        "None: on a GPU.",
    )

    @model_validator(mode="after")
    def _budget_fits_a_sequence(self) -> ScoreConfig:
        budget = self.token_budget
        if self.max_length is not None and budget is not None and budget < self.max_length:
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


def choose_token_budget(
    device_type: str,
    max_length: int,
    free_bytes: int | None = None,
    bytes_per_token: int | None = None,
) -> int:
    """Padded tokens per forward pass for a device: :data:`CPU_TOKEN_BUDGET` off CUDA; on
    CUDA, :data:`GPU_MEMORY_SHARE` of ``free_bytes`` over the activations of one token
    (``bytes_per_token``), rounded down to a power of two and at most
    :data:`GPU_MAX_TOKEN_BUDGET`. Never below ``max_length`` (a full sequence fits a batch)."""
    if device_type != "cuda":
        return max(CPU_TOKEN_BUDGET, max_length)
    if not free_bytes or not bytes_per_token:
        raise ValueError("a CUDA token budget needs the free memory and the bytes per token")
    fits = max(1, int(free_bytes * GPU_MEMORY_SHARE) // bytes_per_token)
    return max(min(GPU_MAX_TOKEN_BUDGET, 1 << (fits.bit_length() - 1)), max_length)


def activation_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """The peak activation bytes one token needs in an inference forward pass, a bound from
    the model's width: the residual stream, attention projections and the MLP's widest
    tensors (an up and a gate projection, and the activation), of one layer at a time."""
    hidden = int(config.hidden_size)
    intermediate = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    return torch.empty((), dtype=dtype).element_size() * (4 * hidden + 3 * intermediate)


def token_budget_for(model: Any, max_length: int) -> int:
    """:func:`choose_token_budget` for a loaded model, on the device it sits on."""
    device = model.device
    if device.type != "cuda":
        return choose_token_budget(device.type, max_length)
    free, _ = torch.cuda.mem_get_info(device)
    per_token = activation_bytes_per_token(model.config, model.dtype)
    return choose_token_budget("cuda", max_length, free, per_token)


def _padded(
    sequences: Sequence[Sequence[int]],
    lengths: np.ndarray,
    batches: list[np.ndarray],
    pad_id: int,
    pin: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch's right-padded ids and attention mask as CPU tensors (pinned with ``pin``,
    for non-blocking copies to a GPU)."""
    for batch in batches:
        width = int(lengths[batch[0]])  # the longest: batches come sorted
        ids = np.full((len(batch), width), pad_id, dtype=np.int64)
        for row, i in enumerate(batch):
            ids[row, : lengths[i]] = sequences[i]
        mask = (np.arange(width) < lengths[batch, None]).astype(np.int64)
        tensors = torch.from_numpy(ids), torch.from_numpy(mask)
        yield tuple(t.pin_memory() for t in tensors) if pin else tensors  # type: ignore[misc]


def score_sequences(
    model: Any,
    tokenizer: Any,
    sequences: Sequence[Sequence[int]],
    token_budget: int,
    on_batch: Callable[[int], None] | None = None,
    prefetch: bool | None = None,
) -> np.ndarray:
    """The reward of each token-id sequence (float64), in input order; ``on_batch(n)`` after
    each forward pass of ``n`` sequences (progress).

    The rewards stay on the model's device until every batch has run, then come back in one
    copy (no synchronisation per forward pass). ``prefetch`` (None: on CUDA) pads the next
    batches in a background thread, into pinned memory on CUDA, while the model runs."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    if lengths.size and lengths.min() == 0:
        raise ValueError("cannot score an empty token sequence")
    rewards = np.empty(len(sequences), dtype=np.float64)
    device = model.device
    on_gpu = device.type == "cuda"
    ahead = on_gpu if prefetch is None else prefetch
    batches = plan_batches(lengths, token_budget)
    tensors = _padded(sequences, lengths, batches, tokenizer.pad_token_id, pin=on_gpu)
    outputs = []
    with torch.inference_mode(), prefetched(tensors, PREFETCH_DEPTH if ahead else 0) as ready:
        for batch, (ids, mask) in zip(batches, ready, strict=True):
            logits = model(
                input_ids=ids.to(device, non_blocking=True),
                attention_mask=mask.to(device, non_blocking=True),
            ).logits
            outputs.append(logits[:, 0])
            if on_batch is not None:
                on_batch(len(batch))
        if outputs:
            rewards[np.concatenate(batches)] = torch.cat(outputs).double().cpu().numpy()
    return rewards


class PairScores(NamedTuple):
    """Rewards (float64) and token counts (after truncation) of both sides, in input order."""

    r_chosen: np.ndarray
    r_rejected: np.ndarray
    chosen_tokens: list[int]
    rejected_tokens: list[int]


def score_encoded(
    model: Any,
    tokenizer: Any,
    chosen_ids: list[list[int]],
    rejected_ids: list[list[int]],
    token_budget: int,
    on_batch: Callable[[int], None] | None = None,
    prefetch: bool | None = None,
) -> PairScores:
    """Score tokenised pairs; both sides share one set of batches."""
    rewards = score_sequences(
        model, tokenizer, chosen_ids + rejected_ids, token_budget, on_batch, prefetch
    )
    n = len(chosen_ids)
    return PairScores(
        rewards[:n], rewards[n:], list(map(len, chosen_ids)), list(map(len, rejected_ids))
    )


def score_table(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict]],
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_length: int,
    token_budget: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    prefetch: bool | None = None,
) -> PairScores:
    """Score in-memory pairs; both sides share one set of batches. ``on_batch(n)`` is told
    after each forward pass how many responses (of ``2 × pairs``) it scored.
    ``token_budget``: None chooses one for the model's device (:func:`token_budget_for`)."""
    ids = encode_sides(tokenizer, conversations, chosen, rejected, max_length)
    budget = token_budget or token_budget_for(model, max_length)
    return score_encoded(model, tokenizer, *ids, budget, on_batch, prefetch)


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


def resolve_dtype(dtype: str, device: torch.device | str = "cpu") -> torch.dtype:
    """``auto``: bfloat16 on CUDA, float32 elsewhere (the module docstring says why)."""
    if dtype != "auto":
        return getattr(torch, dtype)
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


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
    weights = resolve_dtype(dtype, target)
    version = (fingerprint or model_fingerprint(path), str(target), str(weights).split(".")[-1])

    def load() -> tuple[Any, Any]:
        model, tokenizer = load_reward_model(path, dtype=weights)  # a new head: seed 0
        return model.to(target).eval(), tokenizer

    return cached_model("reward-model", path, version, load)


# -- the stage -------------------------------------------------------------------------------


class ScoreStage(MapStage):
    """One output shard per data file of the input pair manifest, in the same order. With
    ``prefetch`` (on a GPU by default), the next batch of pairs is read, rendered and tokenised
    in a background thread while the current one is scored."""

    name = "score"
    columns = INPUT_COLUMNS
    output_schema = SCORE_SCHEMA
    holds_model = True
    runtime_fields = MapStage.runtime_fields | {"prefetch"}  # how it runs, never what it makes

    def __init__(self, config: ScoreConfig):
        super().__init__(config, parent=config.pairs)
        self.max_length = config.max_length or trained_max_length(config.model)
        self._chosen_budget: dict[tuple[str, str], int] = {}  # per (device, dtype): see _plan
        if config.token_budget is not None and config.token_budget < self.max_length:
            raise ValueError(
                f"ScoreConfig.token_budget ({config.token_budget}) is below {config.model}'s "
                f"max_length ({self.max_length}): a full-length sequence must fit in one batch"
            )

    def fingerprint_model(self) -> str:
        return model_fingerprint(self.settings.model)

    def load_model(self) -> tuple[Any, Any]:
        score = self.settings
        return cached_reward_model(score.model, score.device, score.dtype, self.model_version)

    def _plan(self, model: Any) -> tuple[int, bool]:
        """(token budget, prefetch?) for the loaded model on its device. The budget is chosen
        once per process: later shards find the memory the first one's batches left cached by
        torch's allocator, and would choose smaller batches."""
        where = (str(model.device), str(model.dtype))  # the stage's one model, as loaded
        budget = self.settings.token_budget or self._chosen_budget.get(where)
        if budget is None:
            budget = self._chosen_budget[where] = token_budget_for(model, self.max_length)
        prefetch = self.settings.prefetch
        return budget, model.device.type == "cuda" if prefetch is None else prefetch

    def map_batch(self, batch: pa.RecordBatch, model: tuple[Any, Any]) -> pa.Table:
        return next(self.map_batches(iter([batch]), model))[1]

    def map_batches(
        self, batches: Iterator[pa.RecordBatch], model: tuple[Any, Any]
    ) -> Iterator[tuple[pa.RecordBatch, pa.Table]]:
        network, tokenizer = model
        budget, prefetch = self._plan(network)

        def encoded() -> Iterator[tuple[pa.RecordBatch, tuple[list, list]]]:
            for batch in batches:
                columns = [batch.column(c).to_pylist() for c in INPUT_COLUMNS[1:]]
                yield batch, encode_sides(tokenizer, *columns, self.max_length)

        with prefetched(encoded(), 1 if prefetch else 0) as ready:
            for batch, ids in ready:
                scores = score_encoded(network, tokenizer, *ids, budget, prefetch=prefetch)
                yield batch, self._table(batch, scores)

    @staticmethod
    def _table(batch: pa.RecordBatch, scores: PairScores) -> pa.Table:
        columns = {
            "pair_id": batch.column("pair_id"),
            "r_chosen": scores.r_chosen,
            "r_rejected": scores.r_rejected,
            "p": preference_probability(scores.r_chosen, scores.r_rejected),
            "chosen_tokens": scores.chosen_tokens,
            "rejected_tokens": scores.rejected_tokens,
        }
        return pa.table(columns, schema=SCORE_SCHEMA)

    def batch_counts(self, batch: pa.RecordBatch, out: pa.Table) -> dict[str, int]:
        tokens = pc.add(pc.sum(out["chosen_tokens"]), pc.sum(out["rejected_tokens"]))
        return {"tokens": tokens.as_py() or 0}
