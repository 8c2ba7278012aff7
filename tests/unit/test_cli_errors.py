"""The CLI over a corpus of bad inputs: every error is one line on stderr, exit 2, naming the input;
rows that cannot be pairs are quarantined with a reason that says why, and every row is counted.

Each case runs the real ``synpref`` command in a subprocess (what a user meets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.ingest_helpers import HH

SYNPREF = [sys.executable, "-m", "synpref_core.cli"]


def synpref(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [*SYNPREF, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def assert_one_line_error(done: subprocess.CompletedProcess, *names: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def _pairs_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _ingest_ok(tmp_path: Path) -> Path:
    src = _pairs_jsonl(
        tmp_path / "ok.jsonl",
        [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(5)],
    )
    out = tmp_path / "ok-out"
    assert synpref("ingest", "--format", "pairs", src, "--out", out).returncode == 0
    return out


# -- values checked where they enter ----------------------------------------------------------


def test_export_with_an_unknown_status_is_refused(tmp_path):
    out = _ingest_ok(tmp_path)
    done = synpref("export", out, "--out", tmp_path / "x.parquet", "--status", "bogus")
    assert_one_line_error(done, "bogus", "unverified")
    assert not (tmp_path / "x.parquet").exists()


def test_ingest_with_an_unknown_status_is_one_line_naming_the_field(tmp_path):
    src = _pairs_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    done = synpref("ingest", "--format", "pairs", src, "--out", tmp_path / "o", "--status", "bogus")
    assert_one_line_error(done, "status", "bogus")


def test_roles_outside_the_chat_format_are_quarantined_with_a_reason_that_says_so(tmp_path):
    def message(role: str, content: str) -> dict:
        return {"role": role, "content": content}

    rows = [
        {
            "prompt": [message("robot", "beep"), message("user", "hi")],
            "chosen": "a",
            "rejected": "b",
        },
        {"prompt": [message("robot", "beep")], "chosen": "a", "rejected": "b"},
        {
            "prompt": [message("user", "hi"), message("assistant", "hello")],
            "chosen": "a",
            "rejected": "b",
        },
        {
            "prompt": [message("system", "be kind"), message("user", "hi")],
            "chosen": "a",
            "rejected": "b",
        },
    ]
    src = _pairs_jsonl(tmp_path / "roles.jsonl", rows)
    out = tmp_path / "out"
    done = synpref("ingest", "--format", "pairs", src, "--out", out)
    assert done.returncode == 0, done.stderr
    rejects = pl.read_parquet(out / "_stages" / "normalize" / "rejects").sort("source_row")
    assert rejects["reason_code"].to_list() == ["bad_role", "bad_role", "prompt_not_ending_in_user"]
    assert "'robot'" in rejects["reason"][0] and "system, user, assistant" in rejects["reason"][0]
    kept = pl.read_parquet(out / "data")
    assert kept.height == 1 and kept["conversation"][0][0]["role"] == "system"


# -- whole-input failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, payload",
    [
        ("truncated.jsonl.gz", lambda: HH.read_bytes()[:5000]),
        ("not-gzip.jsonl.gz", lambda: b"this is not gzip data\n" * 10),
    ],
)
def test_a_broken_compressed_file_is_one_line_naming_it(tmp_path, name, payload):
    src = tmp_path / name
    src.write_bytes(payload())
    done = synpref("ingest", "--format", "hh-rlhf", src, "--out", tmp_path / "o")
    assert_one_line_error(done, name)


def test_deeply_nested_json_is_one_line_naming_the_file_and_line(tmp_path):
    src = tmp_path / "deep.jsonl"
    good = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})
    src.write_text(good + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    done = synpref("ingest", "--format", "pairs", src, "--out", tmp_path / "out")
    assert_one_line_error(done, "deep.jsonl:2")


def test_out_naming_an_existing_file_or_a_read_only_place(tmp_path):
    src = _pairs_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    assert_one_line_error(synpref("ingest", "--format", "pairs", src, "--out", a_file), "file.txt")
    assert a_file.read_text() == "mine"
    if os.geteuid() != 0:  # root writes anywhere
        read_only = tmp_path / "ro"
        read_only.mkdir(mode=0o555)
        assert_one_line_error(
            synpref("ingest", "--format", "pairs", src, "--out", read_only / "o"), "ro"
        )
    done = synpref("ingest", "--format", "pairs", src, "--out", "/proc/synpref-out")
    assert_one_line_error(done, "/proc/synpref-out")


def test_export_to_a_directory_is_refused_and_leaves_nothing(tmp_path):
    out = _ingest_ok(tmp_path)
    target = tmp_path / "a-dir"
    target.mkdir()
    assert_one_line_error(synpref("export", out, "--out", target), "a-dir")
    assert list(target.iterdir()) == [] and not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize(
    "content", ["not json at all", json.dumps({"some": "other tool"}), "[1, 2]"]
)
def test_inspect_on_a_manifest_that_is_not_ours(tmp_path, content):
    (tmp_path / "manifest.json").write_text(content)
    assert_one_line_error(synpref("inspect", tmp_path), "manifest.json")


def test_eval_with_a_folder_that_is_not_a_model(tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    data = tmp_path / "b.jsonl"
    _pairs_jsonl(data, [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    done = synpref("eval", data, "--model", not_a_model, "--format", "pairs")
    assert_one_line_error(done, "not-a-model", "not a reward model")


def test_eval_with_a_file_of_the_wrong_format_names_it_and_the_reason(tmp_path):
    data = _pairs_jsonl(tmp_path / "wrong.jsonl", [{"question": "q", "answer": "a"}] * 3)
    done = synpref("eval", data, "--model", "minilm", "--format", "pairs")
    line = assert_one_line_error(done, "wrong.jsonl", "missing_field")
    assert "tmp" not in line.split("wrong.jsonl")[0].lower() or str(tmp_path) in line


def test_error_lines_and_source_rows_are_named_so_they_cannot_be_confused(tmp_path):
    good = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})
    empty = json.dumps({"prompt": "q", "chosen": "", "rejected": "b"})
    rows = tmp_path / "rows.jsonl"
    rows.write_text(good + "\n" + empty + "\n")
    out = tmp_path / "out"
    assert synpref("ingest", "--format", "pairs", rows, "--out", out).returncode == 0
    rejects = pl.read_parquet(out / "_stages" / "normalize" / "rejects")
    assert rejects["source_row"].to_list() == [1]  # line 2 of the file: rows count from 0
    broken = tmp_path / "broken.jsonl"
    broken.write_text(good + "\n{not json\n")
    done = synpref("ingest", "--format", "pairs", broken, "--out", tmp_path / "o2")
    assert_one_line_error(done, "broken.jsonl:2:", "(source_row 1)")


# -- what the foundation already handled, kept in the same corpus -----------------------------


def test_whole_input_failures_the_foundation_handles(tmp_path):
    src = _pairs_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    out = tmp_path / "o"
    assert_one_line_error(
        synpref("ingest", "--format", "pairs", tmp_path / "nope.jsonl", "--out", out), "nope.jsonl"
    )
    assert_one_line_error(synpref("ingest", "--format", "bogus", src, "--out", out), "bogus")
    assert_one_line_error(synpref("ingest", "--format", "pairs", src), "--out")
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"sources: [{{format: pairs, paths: [{src}]}}]\nout: {out}\nshard_byts: 5\n")
    assert_one_line_error(synpref("ingest", "--config", typo), "typo.yaml", "shard_byts")
    assert_one_line_error(synpref("inspect", tmp_path / "never-ran"), "never-ran")


def test_row_level_problems_are_quarantined_and_every_row_is_counted(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "a", "rejected": "b"},
        {"prompt": "q2", "chosen": "", "rejected": "b"},
        {"prompt": "q3", "chosen": "same", "rejected": "same"},
        {"prompt": "", "chosen": "a", "rejected": "b"},
        {"prompt": "q1", "chosen": "a", "rejected": "b"},
        {"prompt": "q5", "chosen": 5, "rejected": "b"},
    ]
    src = _pairs_jsonl(tmp_path / "mixed.jsonl", rows)
    out = tmp_path / "out"
    assert synpref("ingest", "--format", "pairs", src, "--out", out).returncode == 0
    counts = json.loads(synpref("inspect", out, "--json").stdout)
    assert counts["input_rows"] == 6
    assert counts["rows"] == 1 and counts["duplicates"] == 1 and counts["quarantined"] == 4
    accounted = (
        counts["rows"] + counts["quarantined"] + counts["duplicates"] + counts["contaminated"]
    )
    assert accounted == counts["input_rows"]
