"""The `synpref` command line as a user runs it (a real subprocess for the main path)."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
from typer.testing import CliRunner

from synpref_core.cli import app
from tests.conftest import DATA

runner = CliRunner()


def test_ingest_inspect_export_round_trip(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "synpref_core.cli",
        "ingest",
        "--format",
        "offsetbias",
        str(DATA / "offsetbias"),
        "--out",
        str(out),
        "--benchmark",
        f"llmbar:{DATA / 'llmbar' / 'Dataset' / 'Processed'}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "input_rows" in done.stdout

    result = runner.invoke(app, ["inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert counts["input_rows"] == 80
    assert counts["input_rows"] == (
        counts["rows"] + counts["quarantined"] + counts["duplicates"] + counts["contaminated"]
    )

    target = tmp_path / "trl.parquet"
    result = runner.invoke(app, ["export", str(out), "--out", str(target)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(target).to_pylist()
    assert len(table) == counts["rows"]
    row = table[0]
    assert row["chosen"][:-1] == row["rejected"][:-1] == row["prompt"]
    assert row["chosen"][-1]["role"] == row["rejected"][-1]["role"] == "assistant"
    assert row["chosen"][-1]["content"] != row["rejected"][-1]["content"]


def test_export_filters_by_status(tmp_path):
    out = tmp_path / "o"
    assert (
        runner.invoke(
            app,
            [
                "ingest",
                "--format",
                "pandalm",
                str(DATA / "pandalm"),
                "--out",
                str(out),
                "--status",
                "gold",
            ],
        ).exit_code
        == 0
    )
    assert (
        runner.invoke(
            app,
            ["export", str(out), "--out", str(tmp_path / "a.parquet"), "--status", "unverified"],
        ).exit_code
        == 0
    )
    assert pq.read_table(tmp_path / "a.parquet").num_rows == 0
    assert (
        runner.invoke(
            app, ["export", str(out), "--out", str(tmp_path / "b.parquet"), "--status", "gold"]
        ).exit_code
        == 0
    )
    assert pq.read_table(tmp_path / "b.parquet").num_rows > 700


def test_clear_errors(tmp_path):
    result = runner.invoke(app, ["ingest", "--format", "csv", "x.csv", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown format 'csv'" in result.output
    result = runner.invoke(
        app,
        [
            "ingest",
            "--format",
            "pairs",
            str(tmp_path / "missing.jsonl"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "no such file" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "nothing"), "--json"])
    assert result.exit_code == 2 and "no manifest" in result.output


def command_help(*command: str) -> str:
    """The help a user sees, wide enough that no option's text is wrapped mid-word."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_help_lists_every_format():
    from synpref_core.rm.eval_results import EVAL_FORMATS

    text = command_help("eval")
    assert all(fmt in text for fmt in EVAL_FORMATS)
    assert "--quiet" in text


def test_help_has_no_restructuredtext_backticks():
    for command in ([], ["ingest"], ["inspect"], ["export"], ["eval"]):
        assert "``" not in command_help(*command), command
