"""Re-runs never serve stale data, one writer per output, no stale files (issue: hardening)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import polars as pl
import pytest

from synpref_core.config import ExecutorConfig, IngestConfig, SourceSpec
from synpref_core.curation.select import SelectConfig, SelectStage
from synpref_core.executors import run
from synpref_core.ingest.pipeline import run_ingest
from synpref_core.io.lock import LOCK_FILE, LockedError, output_lock
from tests.ingest_helpers import write_hh_jsonl

LOCAL = ExecutorConfig(kind="local")
PAIRS = """{"prompt": "p%d", "chosen": "good answer %d", "rejected": "bad answer %d"}\n"""


def _ingest(path, out, shard_bytes=2**20) -> str:
    source = SourceSpec(format="pairs", paths=[str(path)])
    config = IngestConfig(sources=[source], out=str(out), shard_bytes=shard_bytes)
    return run_ingest(config, LOCAL, progress=False)


def _rows(out) -> pl.DataFrame:
    return pl.read_parquet(sorted((out / "data").glob("*.parquet")))


def test_an_edited_input_is_read_again_not_served_from_old_shards(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(PAIRS % (i, i, i) for i in range(50)))
    out = tmp_path / "out"
    _ingest(path, out)
    # One line changes, the file keeps its size (and may keep its mtime's second).
    text = path.read_text().replace("good answer 7", "GOOD answer 7")
    path.write_text(text)
    _ingest(path, out)
    assert "GOOD answer 7" in _rows(out)["chosen"].to_list()
    assert "good answer 7" not in _rows(out)["chosen"].to_list()

    # ...and what derives from it follows: a selection of the ingested pairs is redone.
    select = SelectConfig(input=str(out), out=str(tmp_path / "sel"))
    run(SelectStage(select), LOCAL, progress=False)
    path.write_text(text.replace("GOOD answer 7", "fine answer 7"))
    _ingest(path, out)
    run(SelectStage(select), LOCAL, progress=False)
    assert "fine answer 7" in _rows(tmp_path / "sel")["chosen"].to_list()


def _hold_lock_in_another_process(directory) -> subprocess.Popen:
    code = (
        "import sys, time\n"
        "from synpref_core.io.lock import output_lock\n"
        "with output_lock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path):
    path = write_hh_jsonl(tmp_path)
    out = tmp_path / "out"
    holder = _hold_lock_in_another_process(out)
    try:
        began = time.monotonic()
        with pytest.raises(LockedError, match=rf"being written by pid {holder.pid} on "):
            _ingest(path, out)
        assert time.monotonic() - began < 30  # at once, not after the work
        # A stage writing below a locked output is refused too (ingest's normalize stage).
        below = output_lock(str(out / "_stages" / "normalize"))
        with pytest.raises(LockedError, match=str(holder.pid)), below:
            pass
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock is stale and the next run takes it over.
    assert (out / LOCK_FILE).exists()
    _ingest(path, out)
    assert not (out / LOCK_FILE).exists()
    assert json.loads((out / "manifest.json").read_text())["counts"]["input_rows"] == 2312


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    out = str(tmp_path / "out")
    with output_lock(out), output_lock(out), output_lock(str(tmp_path / "out" / "inner")):
        assert (tmp_path / "out" / LOCK_FILE).exists()
    assert not (tmp_path / "out" / LOCK_FILE).exists()


def test_a_reused_output_keeps_only_what_its_manifest_lists(tmp_path):
    many = write_hh_jsonl(tmp_path)
    out = tmp_path / "out"
    _ingest(many, out, shard_bytes=2**18)  # several shards
    leftover = out / "data" / ".tmp-deadbeef-part-00000.parquet"  # what a killed run leaves
    leftover.write_bytes(b"half a file")
    few = tmp_path / "few.jsonl"
    few.write_text("".join(PAIRS % (i, i, i) for i in range(10)))
    _ingest(few, out)  # one shard, into the same folder
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"] if not f["path"].startswith("_stages")}
    on_disk = {
        str(p.relative_to(out)) for folder in ("data", "rejects") for p in (out / folder).iterdir()
    }
    assert on_disk == listed
    assert pl.read_parquet(out / "data").height == 10  # a plain read sees only this run
    assert sorted(p.name for p in (out / "_markers").iterdir()) == ["part-00000.json"]
    normalize = out / "_stages" / "normalize"
    assert len(list((normalize / "data").iterdir())) == 1


def test_a_vector_store_has_one_owning_process(tmp_path):
    from synpref_core.retrieval.store import StoreConfig, VectorStore

    uri = tmp_path / "vectors"
    holder = _hold_lock_in_another_process(uri)
    try:
        with pytest.raises(LockedError, match=str(holder.pid)):
            VectorStore(StoreConfig(uri=str(uri)))
    finally:
        holder.kill()
        holder.wait()
    with VectorStore(StoreConfig(uri=str(uri))) as store:  # the dead holder's lock is stale
        assert not store.exists("pool")
    assert not (uri / LOCK_FILE).exists()
