"""One writer per output: a lock file in the output directory, naming its holder.

Two runs writing the same output at once would each finish "successfully" while only one run's
files survive. So every run of a stage (``executors.run``), every flow that writes an output and
the vector store hold :class:`OutputLock` on their directory: ``.synpref-lock`` holds the owner's
pid, host and start time, created with O_EXCL so exactly one process wins. A second run fails at
once with one line naming the holder. A lock whose holder is gone (same host, no such pid: a
SIGKILLed run) is stale: the next run takes it over and says so.

The lock is re-entrant within one process: a flow that locks ``OUT`` and then runs the stages
that write ``OUT`` and ``OUT/_stages/normalize`` takes no second lock. A lock also guards what
lies below it: locking ``OUT/x`` fails while another process holds ``OUT``.

Object stores (``s3://``...) have no atomic create-if-absent that pyarrow exposes; there the lock
is not taken and one writer per output is the deployment's job (one flow run per output, which
Prefect's concurrency limits can enforce). Documented in the README.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = ".synpref-lock"
_HELD: dict[Path, int] = {}  # directories this process holds, with their re-entry depth


class LockedError(RuntimeError):
    """Another live process writes this output; the message names it."""


def _holder(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the holder may still run: always on another host (we cannot tell)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _describe(directory: Path, holder: dict | None) -> str:
    if holder is None:
        return f"{directory} is locked by another run ({directory / LOCK_FILE} is unreadable)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (
        f"{directory} is being written by pid {holder.get('pid')} on {holder.get('host')} "
        f"since {since}; wait for it, or remove {directory / LOCK_FILE} if that run is gone"
    )


def _check_above(directory: Path) -> None:
    for parent in directory.parents:
        if parent in _HELD:
            return  # this process holds an enclosing lock
        lock = parent / LOCK_FILE
        if lock.exists() and (holder := _holder(lock)) is not None and _alive(holder):
            raise LockedError(_describe(parent, holder))


def _acquire(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_FILE
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(2):  # a second try after removing a stale lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None and not _alive(holder):
                log.warning("%s: taking over a stale lock of pid %s", directory, holder["pid"])
                lock.unlink(missing_ok=True)
                continue
            raise LockedError(_describe(directory, holder)) from None
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        return
    raise LockedError(_describe(directory, _holder(lock)))


@contextlib.contextmanager
def output_lock(uri: str) -> Iterator[None]:
    """Hold the output lock of ``uri`` (a local directory) for the block; re-entrant."""
    if "://" in uri and not uri.startswith("file://"):
        yield  # object store: see the module docstring
        return
    directory = Path(uri.removeprefix("file://")).expanduser().resolve()
    if directory in _HELD:
        _HELD[directory] += 1
        try:
            yield
        finally:
            _HELD[directory] -= 1
        return
    _check_above(directory)
    _acquire(directory)
    _HELD[directory] = 1
    try:
        yield
    finally:
        del _HELD[directory]
        (directory / LOCK_FILE).unlink(missing_ok=True)
