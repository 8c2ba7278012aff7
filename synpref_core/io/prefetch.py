"""Work ahead in a background thread: :func:`prefetched` runs an iterator in a daemon thread and
hands its items over through a bounded queue, so the consumer (a GPU's forward passes) never
waits for what the producer does (reading, rendering, tokenising, padding into pinned memory;
the fast tokenizers and Parquet release the GIL while they work).

    with prefetched(batches(), depth=2) as ready:
        for item in ready:
            ...

``depth=0`` iterates in the caller's thread (no thread at all). An exception in the producer is
raised in the consumer at the item where it happened; leaving the ``with`` early stops the
producer at its next item.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
_DONE = object()
_POLL_S = 0.1


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


@contextmanager
def prefetched(items: Iterable[T], depth: int) -> Iterator[Iterator[T]]:
    """``items`` produced up to ``depth`` ahead of the consumer, in order."""
    if depth <= 0:
        yield iter(items)
        return
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failed(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="synpref-prefetch", daemon=True)
    thread.start()

    def consume() -> Iterator[T]:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    try:
        yield consume()
    finally:
        stop.set()
        thread.join()
