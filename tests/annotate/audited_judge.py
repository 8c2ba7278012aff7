"""The local judge server under a Python audit hook, for the test that it never reads stored
pairs: every file the process opens through Python is logged, and so is every call of the
Parquet, Arrow-dataset and LanceDB entry points (their readers open files in C++, which the
hook cannot see). The log is written at exit.

    python -m tests.annotate.audited_judge LOG NAME=RM_DIR PORT
"""

from __future__ import annotations

import atexit
import json
import signal
import sys


def main() -> None:
    log, model, port = sys.argv[1], sys.argv[2], sys.argv[3]
    opened: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str):
            opened.append(args[0])

    readers: list[str] = []

    def report() -> None:
        with open(log, "w") as f:
            json.dump({"opened": opened, "readers": readers}, f)

    def watched(module: object, name: str) -> None:
        original = getattr(module, name)

        def call(*args: object, **kwargs: object) -> object:
            readers.append(f"{module.__name__}.{name}({args[:1]!r})")
            return original(*args, **kwargs)

        setattr(module, name, call)

    import lancedb
    import pyarrow.dataset
    import pyarrow.parquet

    for module, name in [
        (pyarrow.parquet, "ParquetFile"), (pyarrow.parquet, "read_table"),
        (pyarrow.parquet, "ParquetDataset"), (pyarrow.dataset, "dataset"),
        (lancedb, "connect"), (lancedb, "connect_async"),
    ]:  # fmt: skip
        watched(module, name)

    atexit.register(report)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.addaudithook(hook)
    from synpref_core.cli import app

    app(["serve-judge", "--model", model, "--port", port], standalone_mode=False)


if __name__ == "__main__":
    main()
