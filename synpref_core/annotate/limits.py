"""Rate limits and retry timing for the judge client: a token bucket (requests or tokens per
minute), exponential backoff with jitter, and reading ``Retry-After``."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from typing import Any


class TokenBucket:
    """``per_minute`` units a minute, refilled continuously; holds one second's worth (at least
    1), so at most that many go out in a burst."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, amount: float = 1.0) -> None:
        amount = min(amount, self.capacity)  # a request above the burst waits for a full bucket
        async with self._lock:  # first come, first served
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)


def backoff_s(base_s: float, max_s: float, retry: int, rng: random.Random) -> float:
    """Seconds before retry number ``retry`` (from 1): ``base_s`` doubling per retry up to
    ``max_s``, with "equal jitter" (half the step fixed, half uniform random)."""
    step = min(max_s, base_s * 2 ** (retry - 1))
    return step * (0.5 + 0.5 * rng.random())


def retry_after_s(headers: Any) -> float | None:
    """Seconds a response's ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date) asks
    for; None when absent or unreadable."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
    return None
