"""The Bradley-Terry loss of a pointwise reward model (DESIGN §4).

    L = mean(−log σ(r(x, y_w) − r(x, y_l) − m))

written as ``softplus(−(r_w − r_l − m))``: the same value, but it neither overflows nor loses
precision when the reward gap is large in either direction (``log(sigmoid(-100))`` is −inf in
float32, ``-softplus(100)`` is −100). The optional margin ``m`` (a number, or one per pair) asks
for a gap of at least ``m`` (Llama 2's margin loss); ``None`` or 0 is plain BT, which v1 found
best.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bt_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Mean Bradley-Terry loss over a batch of pairs (1-D reward tensors of equal length)."""
    gap = r_chosen - r_rejected
    if margin is not None:
        gap = gap - margin
    return F.softplus(-gap).mean()
