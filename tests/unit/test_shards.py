"""Shard store properties: byte-range sharding, idempotent re-runs, URIs, manifests."""

from __future__ import annotations

import json

from synpref_core.config import IngestConfig, SourceSpec
from synpref_core.ingest.pipeline import ingest_counts, run_ingest
from synpref_core.stages import load_manifest
from tests.ingest_helpers import read_dir, write_hh_jsonl


def _config(path, out, shard_bytes=2**18) -> IngestConfig:
    return IngestConfig(
        sources=[SourceSpec(format="hh-rlhf", paths=[str(path)])],
        out=str(out),
        shard_bytes=shard_bytes,
        batch_rows=500,
    )


def test_byte_ranges_keep_every_line_and_its_number(tmp_path):
    path = write_hh_jsonl(tmp_path)
    run_ingest(_config(path, tmp_path / "many"), progress=False)
    run_ingest(_config(path, tmp_path / "one", shard_bytes=2**30), progress=False)
    many, one = load_manifest(str(tmp_path / "many")), load_manifest(str(tmp_path / "one"))
    assert many.num_shards > 5 and one.num_shards == 1
    assert many.counts == one.counts
    assert many.counts["input_rows"] == 2312  # every line of the file, exactly once
    a = read_dir(tmp_path / "many", "data/*.parquet").select("pair_id", "source_row")
    b = read_dir(tmp_path / "one", "data/*.parquet").select("pair_id", "source_row")
    assert a.equals(b)


def test_rerun_recomputes_only_the_removed_shard(tmp_path):
    path = write_hh_jsonl(tmp_path)
    out = tmp_path / "out"
    config = _config(path, out)
    run_ingest(config, progress=False)
    stage = out / "_stages" / "normalize"
    manifests = {p: p.read_bytes() for p in (out / "manifest.json", stage / "manifest.json")}
    parts = sorted((stage / "data").glob("part-*"))
    before = {p.name: p.stat().st_mtime_ns for p in parts}
    markers = {p.name: p.stat().st_mtime_ns for p in (stage / "_markers").glob("*.json")}
    victim = parts[3]
    victim.unlink()

    run_ingest(config, progress=False)

    after = {p.name: p.stat().st_mtime_ns for p in sorted((stage / "data").glob("part-*"))}
    assert victim.exists()
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {victim.name}
    new_markers = {p.name: p.stat().st_mtime_ns for p in (stage / "_markers").glob("*.json")}
    assert {n for n in markers if markers[n] != new_markers[n]} == {"part-00003.json"}
    for path_, content in manifests.items():
        assert path_.read_bytes() == content, f"{path_} changed on re-run"


def test_changed_config_does_not_reuse_old_shards(tmp_path):
    path = write_hh_jsonl(tmp_path)
    out = tmp_path / "out"
    run_ingest(_config(path, out), progress=False)
    gold = _config(path, out).model_copy(
        update={"sources": [SourceSpec(format="hh-rlhf", paths=[str(path)], status="gold")]}
    )
    run_ingest(gold, progress=False)
    statuses = read_dir(out, "data/*.parquet")["status"].unique().to_list()
    assert statuses == ["gold"]


def test_file_uri_output_and_manifest_contents(tmp_path):
    path = write_hh_jsonl(tmp_path)
    uri = (tmp_path / "uri-out").as_uri()
    manifest_uri = run_ingest(_config(path, uri), progress=False)
    assert manifest_uri.startswith("file://")
    manifest = json.loads((tmp_path / "uri-out" / "manifest.json").read_text())
    assert manifest["stage"] == "dedup" and len(manifest["parents"]) == 1
    assert manifest["schemas"]["data"] and manifest["config_hash"]
    assert sum(f["rows"] for f in manifest["files"] if f["kind"] == "data") == manifest["rows"]
    assert ingest_counts(uri)["rows"] == manifest["rows"] == 2303


def test_object_store_style_uri_inputs_are_listed(tmp_path):
    """Inputs given as a directory URI are listed through the pyarrow filesystem."""
    (tmp_path / "in").mkdir()
    write_hh_jsonl(tmp_path / "in")
    config = IngestConfig(
        sources=[SourceSpec(format="hh-rlhf", paths=[(tmp_path / "in").as_uri()])],
        out=str(tmp_path / "out"),
    )
    run_ingest(config, progress=False)
    assert ingest_counts(str(tmp_path / "out"))["input_rows"] == 2312
    rows = read_dir(tmp_path / "out", "data/*.parquet")
    assert rows["source_file"][0] == (tmp_path / "in" / "hh.jsonl").as_uri()
