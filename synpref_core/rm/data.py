"""Training data for the reward model: one rank's shard of a pair manifest, the seeded and
length-windowed order it is trained in, token ids, padded batches, and batched scoring of
encoded pairs (the gold eval during training: :func:`score_encoded_pairs`).

    pairs, total = read_shard(manifest, rank, world_size)
    for step, last_micro, rows in micro_batches(pair_lengths(pairs), micro, accum, seed, 0, n):
        batch = collate(tokenizer, *encode_pairs(tokenizer, pairs.take(rows), max_length))

Everything here is deterministic for a given manifest, rank and seed, so a resumed run sees the
same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

PAIR_COLUMNS = ["conversation", "chosen", "rejected"]
LENGTH_WINDOW = 16  # micro-batches sorted by length together: less padding, still shuffled


def read_shard(manifest: str, rank: int, world_size: int) -> tuple[pa.Table, int]:
    """(this rank's rows ``rank::world_size`` of a pair manifest, total rows), streamed."""
    from synpref_core.stages import iter_batches

    parts, offset = [], 0
    for batch in iter_batches(manifest, columns=PAIR_COLUMNS):
        first = (rank - offset) % world_size
        parts.append(batch.take(pa.array(range(first, batch.num_rows, world_size))))
        offset += batch.num_rows
    if not offset:
        raise ValueError(f"{manifest}: no pairs")
    return pa.Table.from_batches(parts), offset


def pair_lengths(table: pa.Table) -> np.ndarray:
    """A cheap length per pair for batching: characters of the conversation plus the longer
    side (a proxy for tokens that needs no tokenizer pass over the data)."""
    import pyarrow.compute as pc

    conversation = table["conversation"]
    content = pc.utf8_length(pc.struct_field(pc.list_flatten(conversation), "content"))
    parents = pc.list_parent_indices(conversation).to_numpy()
    history = np.bincount(parents, weights=content.to_numpy(), minlength=table.num_rows)
    sides = np.maximum(pc.utf8_length(table["chosen"]), pc.utf8_length(table["rejected"]))
    return history + np.asarray(sides, dtype=np.float64)


def epoch_order(lengths: np.ndarray, micro: int, usable: int, seed: int, epoch: int) -> np.ndarray:
    """Row order of one epoch: a seeded permutation cut to ``usable`` rows, sorted by length
    within windows of ``LENGTH_WINDOW`` micro-batches (less padding; TRL's group_by_length)."""
    order = np.random.default_rng([seed, epoch]).permutation(len(lengths))[:usable]
    window = micro * LENGTH_WINDOW
    for first in range(0, usable, window):
        chunk = order[first : first + window]
        order[first : first + window] = chunk[np.argsort(-lengths[chunk], kind="stable")]
    return order


def micro_batches(
    lengths: np.ndarray, micro: int, accum: int, seed: int, start_step: int, total_steps: int
) -> Iterator[tuple[int, bool, list[int]]]:
    """(optimizer step, last micro-batch of the step?, row indices) of every micro-batch from
    ``start_step`` on (resuming mid-epoch skips what the epoch already used). The tail of an
    epoch that does not fill an optimizer step is dropped, so every rank steps together."""
    per_epoch = len(lengths) // micro // accum
    order, epoch_of_order = None, -1
    for step in range(start_step, total_steps):
        epoch, index = divmod(step, per_epoch)
        if epoch != epoch_of_order:
            order = epoch_order(lengths, micro, per_epoch * accum * micro, seed, epoch)
            epoch_of_order = epoch
        for k in range(accum):
            first = (index * accum + k) * micro
            yield step, k == accum - 1, order[first : first + micro].tolist()


def encode_pairs(
    tokenizer: Any, table: pa.Table, max_length: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of the chosen and of the rejected side of every pair in ``table``."""
    from synpref_core.rm.model import encode_sides

    rows = table.to_pydict()
    return encode_sides(
        tokenizer, rows["conversation"], rows["chosen"], rows["rejected"], max_length
    )


def collate(tokenizer: Any, chosen: list[list[int]], rejected: list[list[int]]) -> dict:
    """Chosen then rejected sides as one right-padded batch (rewards split at ``len(chosen)``)."""
    return dict(tokenizer.pad({"input_ids": chosen + rejected}, return_tensors="pt"))


def score_encoded_pairs(
    model: Any, tokenizer: Any, chosen: list, rejected: list, batch: int, batches: int
) -> tuple[list[float], list[float]]:
    """(chosen, rejected) rewards of encoded pairs from the plain model, batched by length, in
    exactly ``batches`` forward passes (re-scoring a pair once the pairs run out): under ZeRO-3
    every rank must join every forward."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(chosen)), key=lambda i: max(len(chosen[i]), len(rejected[i])))
    scores = [[0.0, 0.0] for _ in chosen]
    with torch.no_grad():
        for b in range(batches):
            indices = order[b * batch : (b + 1) * batch]
            rows = indices or order[:1]
            inputs = collate(tokenizer, [chosen[i] for i in rows], [rejected[i] for i in rows])
            rewards = model(**{k: v.to(device) for k, v in inputs.items()}).logits[:, 0]
            rewards = rewards.float().view(2, len(rows)).T.tolist()
            for i, pair in zip(indices, rewards, strict=False):
                scores[i] = pair
    return [c for c, _ in scores], [r for _, r in scores]
