"""Scoring: the reward of both sides of every pair, and p = σ(r_chosen − r_rejected) (DESIGN §4).

The core, :func:`score_sequences`, runs token-id sequences through a reward model with
length-bucketed dynamic batching: sequences are sorted by length and cut into batches whose
``width × rows`` stays within ``token_budget`` tokens, each padded only to its own longest
sequence, so little compute goes to padding. :func:`score_table` is the same for in-memory
pairs (evaluation and training reuse it).

:class:`ScoreStage` scores the shards of a finished pair manifest into one Parquet file per shard
(``SCORE_SCHEMA``), streaming ``batch_rows`` pairs at a time, with markers and a manifest; a re-run
skips finished shards. The stage's identity holds a fingerprint of the model's weights, so new
weights written to the same path are scored anew rather than skipped. The model is loaded once
per process (a module-level cache), so the local executor loads it once and each Ray actor once.

Run locally::

    score_pairs(ScoreConfig(pairs="OUT/ingest", out="OUT/scores"), ExecutorConfig())

At scale, ``ExecutorConfig(kind="ray", ray_address=..., cpus_per_shard=C)`` with
``ScoreConfig(actors=N)`` starts N Ray actors of C CPUs each, which load the model once and take
shards until none is left. Threads per process: ``$SYNPREF_TORCH_THREADS`` if set, else the CPUs
the process was given (an actor's ``cpus_per_shard``, a local pool worker's share of the cores),
else torch's default.

On GPUs: ``ScoreConfig(device="auto")`` (the default) runs on CUDA when the process sees a GPU,
else on the CPU; ``dtype="auto"`` is bfloat16 on CUDA and float32 on the CPU (``"float32"`` on a
GPU gives the CPU's numbers up to kernel rounding). On Ray, ``num_gpus`` is what each actor
reserves (``1``, or ``0.5`` for two actors per GPU); an actor without it sees no GPU, so
``device="auto"`` puts it on the CPU and ``device="cuda"`` fails when it loads the model. Raise
``token_budget`` on a GPU until its memory is full (``4096`` is the CPU's sweet spot), e.g.::

    ScoreConfig(pairs=..., device="cuda", num_gpus=1, actors=8, token_budget=65536)
    ExecutorConfig(kind="ray", ray_address=..., cpus_per_shard=4)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field, model_validator

from synpref_core.config import DEFAULT_HOME, ExecutorConfig, StrictModel, config_hash
from synpref_core.executors import run_stage, run_stage_on_actors
from synpref_core.io import fs as fsio
from synpref_core.rm.model import DEFAULT_BACKBONE, encode, load_reward_model, resolve_backbone
from synpref_core.schema import fingerprint
from synpref_core.stages import ShardResult, Stage, load_manifest, part_name

log = logging.getLogger(__name__)

THREADS_ENV = "SYNPREF_TORCH_THREADS"
# Padded tokens per forward pass. 4,096 measured fastest for MiniLM on CPU (benchmarks/README.md,
# "Scoring"): bigger batches outgrow the caches. On a GPU, raise it until the device is full.
DEFAULT_TOKEN_BUDGET = 4096
INPUT_COLUMNS = ["pair_id", "conversation", "chosen", "rejected"]
# What the weights fingerprint reads in a model directory. Content, not (size, mtime): hashing
# MiniLM's 90 MB model.safetensors takes 0.14 s on the 2-core dev box (~650 MB/s, about 25 s for
# an 8B model's 16 GB), once per stage, and a copy or a re-save of the same weights is not new.
WEIGHT_FILES = ("config.json", "*.safetensors", "*.bin")

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


class ScoreConfig(StrictModel):
    """What to score with which model. Its hash (less ``out``, ``actors`` and ``num_gpus``) and
    the weights' fingerprint name the output."""

    model: str = Field(DEFAULT_BACKBONE, description="Reward model: a name or a path.")
    max_length: int = Field(256, ge=8, description="Tokens per sequence; the start is cut.")
    token_budget: int = Field(
        DEFAULT_TOKEN_BUDGET, ge=8, description="Most tokens (padding included) per forward pass."
    )
    pairs: str = Field(description="Input: a finished pair stage (its directory or manifest).")
    out: str = Field(str(DEFAULT_HOME / "scores"), description="Output directory or URI.")
    actors: int = Field(2, ge=1, description="Ray executor: actors, each holding one model.")
    batch_rows: int = Field(1024, ge=1, description="Pairs read and scored at a time.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs; auto: CUDA when the process sees a GPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Model weights and compute; auto: bfloat16 on CUDA, float32 on CPU."
    )
    num_gpus: float = Field(0, ge=0, description="Ray executor: GPUs each actor reserves.")

    @model_validator(mode="after")
    def _budget_fits_a_sequence(self) -> ScoreConfig:
        if self.token_budget < self.max_length:
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
    model: Any, tokenizer: Any, sequences: Sequence[Sequence[int]], token_budget: int
) -> np.ndarray:
    """The reward of each token-id sequence (float64), in input order."""
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
    return rewards


def score_table(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict]],
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_length: int,
    token_budget: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(r_chosen, r_rejected) of in-memory pairs, both float64 arrays in input order."""
    r_chosen, r_rejected, _, _ = _score_pairs(
        model, tokenizer, conversations, chosen, rejected, max_length, token_budget
    )
    return r_chosen, r_rejected


def _score_pairs(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict]],
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_length: int,
    token_budget: int,
) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """Rewards and token counts of both sides; both sides share one set of batches."""
    chosen_ids = encode(tokenizer, conversations, chosen, max_length)
    rejected_ids = encode(tokenizer, conversations, rejected, max_length)
    rewards = score_sequences(model, tokenizer, chosen_ids + rejected_ids, token_budget)
    n = len(chosen_ids)
    return rewards[:n], rewards[n:], list(map(len, chosen_ids)), list(map(len, rejected_ids))


def preference_probability(r_chosen: np.ndarray, r_rejected: np.ndarray) -> np.ndarray:
    """σ(r_chosen − r_rejected): the Bradley-Terry probability that chosen is preferred."""
    return torch.sigmoid(torch.from_numpy(r_chosen - r_rejected)).numpy()


# -- one model per process -------------------------------------------------------------------

# (path, max_length, weights fingerprint, device, dtype) → (model, tokenizer)
_MODELS: dict[tuple[str, int, str, str, str], tuple[Any, Any]] = {}


def model_fingerprint(name_or_path: str) -> str:
    """BLAKE2b of a model directory's config and weight files (``WEIGHT_FILES``: names, sizes
    and bytes). A hub name is pinned by the commit its files resolve to (the name of the
    snapshot directory they are cached in), fetching only its config.json if not cached."""
    path = Path(resolve_backbone(name_or_path))
    if not path.is_dir():
        from huggingface_hub import hf_hub_download

        return f"{path}@{Path(hf_hub_download(str(path), 'config.json')).parent.name}"
    digest = hashlib.blake2b(digest_size=16)
    files = sorted({f for pattern in WEIGHT_FILES for f in path.glob(pattern) if f.is_file()})
    for file in files:
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when this process sees a GPU, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device='cuda' but this process sees no CUDA device (on Ray: set ScoreConfig.num_gpus)"
        )
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA, float32 on the CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def cached_reward_model(
    name_or_path: str,
    max_length: int,
    device: str = "auto",
    dtype: str = "auto",
    fingerprint: str | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode on ``device`` in ``dtype``, loaded at most once per
    process and key. The key holds the weights' fingerprint (computed here unless given), so
    new weights at the same path are loaded anew; the stale model is dropped."""
    path = resolve_backbone(name_or_path)
    target = resolve_device(device)
    weights = resolve_dtype(dtype, target)
    fingerprint = fingerprint or model_fingerprint(path)
    key = (path, max_length, fingerprint, str(target), str(weights).removeprefix("torch."))
    if key not in _MODELS:
        for stale in [k for k in _MODELS if k[0] == path and k[2] != fingerprint]:
            del _MODELS[stale]
        model, tokenizer = load_reward_model(path, dtype=weights)  # a new head: seed 0
        log.info("loaded reward model %s (%s) in process %d", path, fingerprint, os.getpid())
        _MODELS[key] = (model.to(target).eval(), tokenizer)
    return _MODELS[key]


def torch_threads(cpus: float | None) -> int | None:
    """Threads for one scoring process: ``$SYNPREF_TORCH_THREADS``, else the CPUs it was given
    (never more, so actors sharing a machine do not oversubscribe it), else None: torch's own
    default (one per core)."""
    if os.environ.get(THREADS_ENV):
        return int(os.environ[THREADS_ENV])
    return max(1, round(cpus)) if cpus is not None else None


@contextmanager
def using_torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch threads, then restore the caller's count (in-process runs)."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


# -- the stage -------------------------------------------------------------------------------


class ScoreStage(Stage):
    """One output shard per data file of the input pair manifest, in the same order."""

    name = "score"

    def __init__(self, config: ScoreConfig, threads: int | None = None):
        parent = load_manifest(config.pairs)  # fails here, naming the path, if unfinished
        identity = config_hash(config.model_copy(update={"out": "", "actors": 1, "num_gpus": 0}))
        # The input's run id and the weights are part of the identity: re-ingested pairs, or new
        # weights written to the same model path, are scored again.
        self.fingerprint = model_fingerprint(config.model)
        key = [identity, parent.run_id, self.fingerprint]
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
        super().__init__(
            out=config.out,
            config=config.model_dump(mode="json"),
            config_hash=digest[:16],
            parents=[parent.uri],
        )
        self.score = config
        self.pairs_dir = parent.dir
        self.threads = threads  # how this process runs, never what it computes

    def schemas(self) -> dict[str, str]:
        return {"data": fingerprint(SCORE_SCHEMA)}

    def plan(self) -> list[dict[str, Any]]:
        parent = load_manifest(self.score.pairs)
        return [{"input": f["path"], "rows": f["rows"]} for f in parent.entries("data")]

    def load_model(self) -> tuple[Any, Any]:
        score = self.score
        return cached_reward_model(
            score.model, score.max_length, score.device, score.dtype, self.fingerprint
        )

    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        with using_torch_threads(self.threads):
            return self._run_shard(index, spec)

    def _run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        model, tokenizer = self.load_model()
        in_fs, in_path = fsio.resolve(fsio.join(self.pairs_dir, spec["input"]))
        fs, root = fsio.resolve(self.out)
        rel = f"data/{part_name(index)}.parquet"
        counts = {"rows": 0, "tokens": 0}
        with (
            fsio.AtomicParquetWriter(fs, fsio.join(root, rel), SCORE_SCHEMA) as out,
            in_fs.open_input_file(in_path) as f,
        ):
            batches = pq.ParquetFile(f).iter_batches(self.score.batch_rows, columns=INPUT_COLUMNS)
            for batch in batches:
                table = self._score_batch(model, tokenizer, batch)
                out.write(table)
                counts["rows"] += table.num_rows
                for side in ("chosen_tokens", "rejected_tokens"):
                    counts["tokens"] += int(table[side].to_numpy().sum())
        return {
            "shard": index,
            "files": [{"path": rel, "kind": "data", "rows": out.rows, "bytes": out.size()}],
            "counts": counts,
        }

    def _score_batch(self, model: Any, tokenizer: Any, batch: pa.RecordBatch) -> pa.Table:
        r_chosen, r_rejected, n_chosen, n_rejected = _score_pairs(
            model,
            tokenizer,
            batch.column("conversation").to_pylist(),
            batch.column("chosen").to_pylist(),
            batch.column("rejected").to_pylist(),
            self.score.max_length,
            self.score.token_budget,
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


# -- running it ------------------------------------------------------------------------------


def score_pairs(
    config: ScoreConfig, executor: ExecutorConfig | None = None, progress: bool = True
) -> str:
    """Score every pair of ``config.pairs`` into ``config.out``; return the manifest URI.

    ``local``: the stage's shards in this process (or a local pool with ``workers > 1``).
    ``ray``: ``config.actors`` actors of ``executor.cpus_per_shard`` CPUs and
    ``config.num_gpus`` GPUs each.
    Finished shards are skipped either way, and both give the same numbers.
    """
    executor = executor or ExecutorConfig()
    if executor.kind == "ray":
        stage = ScoreStage(config, torch_threads(executor.cpus_per_shard))
        return run_stage_on_actors(stage, executor, config.actors, config.num_gpus, progress)
    cpus = (os.cpu_count() or 1) / executor.workers if executor.workers > 1 else None
    return run_stage(ScoreStage(config, torch_threads(cpus)), executor, progress)
