"""Content-addressed request cache on disk: a re-run or a resumed run never pays twice.

The key of a request is what its answer depends on: the endpoint's model, the sampling params,
the prompt template version, the messages and the sample index (so n self-consistency samples
at temperature 0.7 are n entries). One JSON file per key, named by the sha256 of the key's
canonical JSON, under ``<cache_dir>/<first 2 hex digits>/``, written atomically (tmp file then
``os.replace``) so a killed run leaves no half-written entry. Entries hold the response text and
its token usage, never an API key or a URL.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_key(fields: dict[str, Any]) -> str:
    """sha256 hex digest of ``fields`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class RequestCache:
    """Finished responses by key; ``get`` returns ``None`` for a miss or an unreadable entry."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.path(key).read_text())
        except (OSError, ValueError):  # a miss, or an entry damaged outside our atomic writes
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Write ``entry`` under ``key`` atomically. The tmp name is per process: within one,
        the client never writes a key twice at once (identical requests in flight share one)."""
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        text = json.dumps(entry, sort_keys=True)
        try:
            tmp.write_text(text)
        except FileNotFoundError:  # the key's directory is new
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
