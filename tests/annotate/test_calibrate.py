"""Judge calibration: the accuracy arithmetic on hand-made judgements, and `synpref
judge-calibrate` end to end on real gold pairs with the local judge server."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from synpref_core.annotate.calibrate import calibration_metrics, calibration_table, metric_name
from synpref_core.cli import app
from tests.stage_helpers import write_stage


def test_accuracy_per_judge_category_and_objectivity():
    judged = pa.table(
        {
            "pair_id": ["a", "b", "c", "d"],
            "outcome": ["agree", "disagree", "undecided", "agree"],
            "model_votes": [
                [("x", "chosen"), ("y", "chosen")],
                [("x", "rejected"), ("y", "chosen")],
                [("x", "undecided"), ("y", "rejected")],
                [("x", "chosen"), ("y", "chosen")],
            ],
        }
    )
    attr = lambda v: {"value": v, "source": "human"}  # noqa: E731
    gold = pa.table(
        {
            "pair_id": ["a", "b", "c", "d"],
            "task_category": [attr("math"), attr("math"), attr("coding & debugging"), None],
            "objectivity": [attr("objective")] * 3 + [attr("subjective")],
        }
    )
    rows = {
        (r["judge"], r["slice"], r["value"]): r for r in calibration_table(judged, gold).to_dicts()
    }
    assert rows[("x", "all", "all")]["accuracy"] == 2 / 4  # a, d right; c undecided
    assert rows[("x", "all", "all")]["decided"] == 3 / 4
    assert rows[("y", "all", "all")]["accuracy"] == 3 / 4
    assert rows[("ensemble", "all", "all")]["accuracy"] == 2 / 4
    assert rows[("ensemble", "all", "all")]["decided"] == 3 / 4
    assert rows[("x", "category", "math")]["accuracy"] == 1 / 2
    assert rows[("y", "category", "unknown")]["pairs"] == 1  # d has no category
    assert rows[("y", "objectivity", "objective")]["accuracy"] == 2 / 3
    metrics = calibration_metrics(calibration_table(judged, gold))
    assert metrics["calibration.y.accuracy"] == 0.75
    assert (
        metrics[metric_name("calibration", "x", "category", "coding & debugging", "accuracy")] == 0
    )
    assert "calibration.x.category.coding _ debugging.accuracy" in metrics


def test_judge_calibrate_cli_on_real_gold_pairs(world, tmp_path):
    gold_rows = world["candidates"].slice(0, 6)
    status = gold_rows.schema.get_field_index("status")
    gold_rows = gold_rows.set_column(status, "status", pa.array(["gold"] * 6))
    gold = write_stage(gold_rows, str(tmp_path / "gold"))
    best = world["panel"].local_models["best"]
    args = [
        "judge-calibrate", gold, "--judge", f"best={best}", "--store", world["store"].uri,
        "--samples", "2", "--out", str(tmp_path / "cal"), "--json",
        "--cache-dir", str(tmp_path / "cache"),
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    overall = {r["judge"]: r for r in rows if r["slice"] == "all"}
    assert set(overall) == {"best", "ensemble"}
    assert overall["best"]["pairs"] == overall["ensemble"]["pairs"] == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--judge", "best"], "--judge wants NAME=DIR"),
        ([], "give --judge NAME=RM_DIR"),
        (["--judge", "best=/no/such/dir"], "no such model directory"),
    ],
)
def test_judge_calibrate_cli_errors_are_one_line(args, message, tmp_path):
    result = CliRunner().invoke(app, ["judge-calibrate", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_the_vllm_panel_in_infra_is_a_valid_judge_panel():
    from synpref_core.annotate.panel import JudgePanel, panel_identity
    from synpref_core.config import load_config
    from tests.conftest import REPO

    panel = load_config(REPO / "infra" / "vllm" / "panel.yaml", JudgePanel)
    assert [e.name for e in panel.endpoints] == ["qwen3-8b", "llama-3.1-8b"]
    moved = panel.model_copy(
        update={
            "endpoints": [e.model_copy(update={"base_url": "http://x/v1"}) for e in panel.endpoints]
        }
    )
    assert panel_identity(moved) == panel_identity(panel)  # where a judge runs is not what it is
    other = panel.model_copy(update={"samples": 3})
    assert panel_identity(other) != panel_identity(panel)


def test_the_annotate_command_names_a_down_endpoint_in_one_line(tmp_path, pairs_dir):
    import subprocess
    import sys

    import yaml

    from tests.annotate_servers import free_port
    from tests.conftest import REPO

    url = f"http://127.0.0.1:{free_port()}/v1"
    config = {
        "candidates": pairs_dir,
        "panel": {"endpoints": [{"name": "down", "base_url": url, "model": "m"}]},
        "out": str(tmp_path / "out"),
    }
    path = tmp_path / "annotate.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "flows.annotate", "--config", str(path)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: endpoint 'down' is down: ") and url in line
