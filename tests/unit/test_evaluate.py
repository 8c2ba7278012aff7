"""The evaluation harness: every scorer on hand-made scored pairs with known answers, then
``synpref eval`` end to end with a tiny real RM, and MLflow logging."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from synpref_core.cli import app
from synpref_core.rm.benchmarks import (
    EvaluationError,
    calibration,
    correct,
    judgebench_category,
    score_results,
)
from synpref_core.rm.report import evaluation_metrics, log_evaluation, markdown
from tests.conftest import REPO
from tests.rm_helpers import tiny_model_dir

FIXTURES = REPO / "tests" / "fixtures" / "formats"
runner = CliRunner()


def pair(
    r_chosen: float,
    r_rejected: float,
    subset: str | None = None,
    group: str | None = None,
    meta: dict | None = None,
    chosen: str = "c",
    rejected: str = "r",
) -> dict:
    return {
        "pair_id": f"p{r_chosen}-{r_rejected}-{subset}-{group}-{json.dumps(meta)}",
        "source_subset": subset,
        "group_id": group,
        "meta": json.dumps(meta or {}),
        "chosen": chosen,
        "rejected": rejected,
        "r_chosen": r_chosen,
        "r_rejected": r_rejected,
    }


def table(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema_overrides={"source_subset": pl.String, "group_id": pl.String})


# --------------------------------------------------------------------------------- pairwise


def test_correct_counts_ties_and_nan_as_wrong():
    assert correct([2.0, 1.0, math.nan, 0.0], [1.0, 1.0, 0.0, math.nan]).tolist() == [
        True,
        False,
        False,
        False,
    ]


def test_pairwise_per_subset_macro_and_length_baseline():
    rows = [
        # subset a: right, right, tie (wrong) -> 2/3; lengths: longer, equal, shorter -> 1/3
        pair(1.0, 0.0, "a", chosen="long!", rejected="shrt"),
        pair(0.5, -0.5, "a", chosen="same", rejected="same"),
        pair(0.3, 0.3, "a", chosen="s", rejected="longer"),
        # subset b: right -> 1; chosen longer -> 1
        pair(2.0, 1.0, "b", chosen="longer", rejected="s"),
        # no subset: wrong -> 0; shorter -> 0
        pair(-1.0, 1.0, None, chosen="s", rejected="longer"),
    ]
    result = score_results(table(rows), "pairs")
    assert set(result.json_dict()) >= {
        "overall",
        "subsets",
        "length_baseline",
        "calibration",
        "count",
    }
    assert result.format == "pairs"
    assert result.count == 5
    subsets = {k: v.model_dump(exclude_unset=True) for k, v in result.subsets.items()}
    assert set(subsets) == {"a", "b", "default"}
    assert subsets["a"] == pytest.approx({"accuracy": 2 / 3, "length_baseline": 1 / 3, "count": 3})
    assert subsets["b"] == {"accuracy": 1.0, "length_baseline": 1.0, "count": 1}
    assert subsets["default"] == {"accuracy": 0.0, "length_baseline": 0.0, "count": 1}
    assert result.overall == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert result.length_baseline == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert result.detail.micro == pytest.approx(3 / 5)
    json.dumps(result.json_dict(), allow_nan=False)  # valid JSON: no NaN anywhere


def test_length_baseline_counts_characters_not_bytes():
    # "ééé" is 3 characters (6 UTF-8 bytes), "abcd" 4: the chosen is the shorter one.
    result = score_results(table([pair(1.0, 0.0, "x", chosen="ééé", rejected="abcd")]), "pairs")
    assert result.length_baseline == 0.0
    assert result.overall == 1.0


def test_unknown_format_and_missing_columns_are_errors():
    with pytest.raises(EvaluationError, match="unknown format"):
        score_results(table([pair(1.0, 0.0)]), "nope")
    with pytest.raises(EvaluationError, match="lack columns"):
        score_results(table([pair(1.0, 0.0)]).drop("r_rejected"), "pairs")


# --------------------------------------------------------------------------------- RM-Bench


def rm_bench_item(item: int, subset: str, is_correct) -> list[dict]:
    """9 pairs of one item; chosen/rejected lengths 10/20/30 vs 12/22/32 by style."""
    rows = []
    for i in range(3):
        for j in range(3):
            outcome = is_correct(i, j)  # True, False, or "tie"
            r_rejected = 0.0
            r_chosen = {True: 1.0, False: -1.0, "tie": 0.0}[outcome]
            rows.append(
                pair(
                    r_chosen,
                    r_rejected,
                    subset,
                    group=f"rm-bench:{item}",
                    meta={"id": item, "chosen_style": i, "rejected_style": j},
                    chosen="c" * (10 + 10 * i),
                    rejected="r" * (12 + 10 * j),
                )
            )
    return rows


def test_rm_bench_easy_normal_hard():
    # chat item: right only below the diagonal (chosen more formatted) -> easy 1, normal 0, hard 0
    chat = rm_bench_item(1, "chat", lambda i, j: i > j)
    # math item: all right except the hardest cell (0, 2), a tie -> easy 1, normal 1, hard 2/3
    math_ = rm_bench_item(2, "math", lambda i, j: "tie" if (i, j) == (0, 2) else True)
    result = score_results(table(chat + math_), "rm-bench")
    assert result.count == 18
    chat_block, math_block = result.subsets["chat"], result.subsets["math"]
    assert (chat_block.easy, chat_block.normal, chat_block.hard) == (1.0, 0.0, 0.0)
    assert chat_block.accuracy == pytest.approx(1 / 3)
    assert math_block.easy == 1.0 and math_block.normal == 1.0
    assert math_block.hard == pytest.approx(2 / 3)
    assert math_block.accuracy == pytest.approx(8 / 9)
    assert chat_block.count == 9 and chat_block.groups == 1
    detail = result.detail
    assert detail.easy == 1.0
    assert detail.normal == 0.5
    assert detail.hard == pytest.approx(1 / 3)
    assert detail.groups == 2
    assert result.overall == pytest.approx((1 + 0.5 + 1 / 3) / 3)
    assert detail.matrix[0][2] == 0.0  # cell (0, 2): chat wrong, math tied (wrong)
    assert detail.matrix[0][1] == 0.5  # cell (0, 1): chat wrong, math right
    # Longer wins only below the diagonal (chosen 20/30 vs rejected 12/22): easy 1, others 0.
    assert detail.length_baseline_levels == {"easy": 1.0, "normal": 0.0, "hard": 0.0}
    assert result.length_baseline == pytest.approx(1 / 3)
    assert chat_block.length_baseline == pytest.approx(1 / 3)


def test_rm_bench_cells_average_over_items_that_have_them():
    # Item 2 lost its (2, 0) cell (e.g. to dedup): that cell is item 1's alone.
    rows = rm_bench_item(1, "chat", lambda i, j: True) + [
        r
        for r in rm_bench_item(2, "chat", lambda i, j: False)
        if json.loads(r["meta"])["chosen_style"] != 2 or json.loads(r["meta"])["rejected_style"]
    ]
    result = score_results(table(rows), "rm-bench")
    assert result.count == 17
    matrix = result.detail.matrix
    assert matrix[2][0] == 1.0 and matrix[1][0] == 0.5
    assert result.detail.easy == pytest.approx((1.0 + 0.5 + 0.5) / 3)


# --------------------------------------------------------------------------------- RMB


def bon(group: str, subset: str, best: float, losers: list[float]) -> list[dict]:
    return [
        pair(
            best,
            loser,
            subset,
            group=f"rmb-bon:{group}",
            meta={"kind": "bon", "bon_uid": group, "loser": k},
            chosen="best answer",
            rejected="x" * (5 + 10 * k),  # loser 0 shorter than the best, loser 1 longer
        )
        for k, loser in enumerate(losers)
    ]


def test_rmb_best_of_n_tie_fails_and_pairwise_separately():
    rows = [
        *bon("g1", "BoN_set/Helpfulness/Chat", 2.0, [1.0, 2.0]),  # a loser ties the best: fails
        *bon("g2", "BoN_set/Helpfulness/Chat", 2.0, [1.0, 0.0]),  # beats every loser: counts
        *bon("g3", "BoN_set/Harmlessness/Crime", 1.0, [0.5]),  # beats its one loser
        pair(1.0, 0.0, "Pairwise_set/Helpfulness/Code", meta={"kind": "pairwise"}),
        pair(0.0, 1.0, "Pairwise_set/Helpfulness/Code", meta={"kind": "pairwise"}),
    ]
    result = score_results(table(rows), "rmb")
    assert result.count == 7
    bon_detail = result.detail["bon"]
    assert bon_detail.groups == 3 and bon_detail.count == 5
    assert bon_detail.overall == pytest.approx((0.5 + 1.0) / 2)
    assert bon_detail.detail.micro == pytest.approx(2 / 3)
    subsets = result.subsets
    assert subsets["BoN_set/Helpfulness/Chat"].accuracy == 0.5
    assert subsets["BoN_set/Helpfulness/Chat"].groups == 2
    assert subsets["BoN_set/Helpfulness/Chat"].count == 4
    assert subsets["BoN_set/Harmlessness/Crime"].accuracy == 1.0
    assert subsets["Pairwise_set/Helpfulness/Code"].kind == "pairwise"
    assert result.detail["pairwise"].overall == 0.5
    assert result.overall == pytest.approx((0.75 + 0.5) / 2)
    # Length: groups with a second loser lose it (loser 1 is longer than the best); g3 wins.
    assert subsets["BoN_set/Helpfulness/Chat"].length_baseline == 0.0
    assert subsets["BoN_set/Harmlessness/Crime"].length_baseline == 1.0


def test_rmb_best_of_n_best_beats_all():
    result = score_results(table(bon("g", "s", 3.0, [2.9, -1.0, 0.0])), "rmb")
    assert result.overall == 1.0
    assert result.subsets["s"].model_dump(exclude_unset=True) == {
        "kind": "bon",
        "accuracy": 1.0,
        "length_baseline": 0.0,
        "count": 3,
        "groups": 1,
    }
    assert "pairwise" not in result.detail


# --------------------------------------------------------------------------------- JudgeBench


@pytest.mark.parametrize(
    ("source", "category"),
    [
        ("mmlu-pro-math", "knowledge"),
        ("mmlu-pro-law", "knowledge"),
        ("livebench-reasoning", "reasoning"),
        ("livebench-math", "math"),
        ("livecodebench", "coding"),
        ("LiveCodeBench-v5", "coding"),
        ("arena-hard", "other"),
        (None, "other"),
    ],
)
def test_judgebench_category_mapping(source, category):
    assert judgebench_category(source) == category


def test_judgebench_accuracy_per_category():
    rows = [
        pair(1.0, 0.0, "mmlu-pro-math"),
        pair(0.0, 1.0, "mmlu-pro-law"),
        pair(1.0, 0.0, "livebench-reasoning"),
        pair(1.0, 0.0, "livebench-math"),
        pair(1.0, 1.0, "livecodebench"),  # tie: wrong
        pair(1.0, 0.0, "something-else"),
    ]
    result = score_results(table(rows), "judgebench")
    accuracy = {k: (v.accuracy, v.count) for k, v in result.subsets.items()}
    assert accuracy == {
        "knowledge": (0.5, 2),
        "reasoning": (1.0, 1),
        "math": (1.0, 1),
        "coding": (0.0, 1),
        "other": (1.0, 1),
    }
    assert result.overall == pytest.approx(4 / 6)  # over all pairs
    assert result.detail.macro == pytest.approx((0.5 + 1 + 1 + 0 + 1) / 5)
    assert set(result.detail.sources) == {r["source_subset"] for r in rows}


# --------------------------------------------------------------------------------- calibration


def test_calibration_bins_and_counts():
    d = math.log(3)  # sigmoid(ln 3) = 0.75
    cal = calibration([0.0, d, 0.0, 10.0], [0.0, 0.0, d, 0.0])
    bins = cal.bins
    assert len(bins) == 10
    assert [b.lo for b in bins] == pytest.approx([k / 10 for k in range(10)])
    counts = [b.count for b in bins]
    # tie: 0.5 twice; +ln3: 0.75 (won) & 0.25 (lost); -ln3: 0.25 (won) & 0.75 (lost); +10: ~1, ~0
    assert counts == [1, 0, 2, 0, 0, 2, 0, 2, 0, 1]
    assert sum(counts) == 2 * cal.pairs == 8
    assert bins[5].accuracy == 0.5 and bins[5].mean_p == 0.5
    assert bins[7].accuracy == 0.5 and bins[7].mean_p == pytest.approx(0.75)
    assert bins[9].accuracy == 1.0 and bins[0].accuracy == 0.0
    assert bins[1].model_dump() == {
        "lo": 0.1,
        "hi": 0.2,
        "count": 0,
        "mean_p": None,
        "accuracy": None,
    }
    expected_ece = (2 * 0 + 2 * 0.25 + 2 * 0.25 + 2 * (1 - bins[9].mean_p)) / 8
    assert cal.ece == pytest.approx(expected_ece)


def test_calibration_is_in_every_result_and_skips_nan():
    result = score_results(table([pair(1.0, 0.0, "a"), pair(math.nan, 0.0, "a")]), "pairs")
    assert result.calibration.pairs == 1
    assert sum(b.count for b in result.calibration.bins) == 2
    assert result.overall == 0.5  # the NaN pair is scored, as wrong


def test_metrics_names_are_sanitized_and_markdown_lists_subsets():
    rows = bon("g", "BoN_set/Helpfulness/Idea Generation", 1.0, [0.0])
    result = score_results(table(rows), "rmb")
    metrics = evaluation_metrics(result)
    assert metrics["eval.rmb.overall"] == 1.0
    assert metrics["eval.rmb.subset.BoN_set_Helpfulness_Idea_Generation"] == 1.0
    assert "eval.rmb.subset.BoN_set_Helpfulness_Idea_Generation.length_baseline" in metrics
    assert all(isinstance(v, float) for v in metrics.values())
    text = markdown(result)
    assert "| BoN_set/Helpfulness/Idea Generation | 100.0 |" in text
    assert "| [0.9, 1.0) |" in text


# --------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("rm"))


def test_synpref_eval_rm_bench_json(tiny_rm, tmp_path):
    out = tmp_path / "eval"
    args = ["eval", "--model", str(tiny_rm), "--format", "rm-bench"]
    args += [str(FIXTURES / "rm-bench.json"), "--json", "--out", str(out), "--max-length", "64"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"overall", "subsets", "length_baseline", "calibration", "count", "format"} <= set(data)
    assert data["format"] == "rm-bench"
    assert data["count"] == 18
    assert data["detail"]["groups"] == 2
    assert set(data["subsets"]) == {"chat", "math"}
    assert all(block["count"] == 9 for block in data["subsets"].values())
    assert {"easy", "normal", "hard"} <= set(data["detail"])
    assert data["ingest"]["rows"] == 18
    assert sum(b["count"] for b in data["calibration"]["bins"]) == 36
    assert json.loads((out / "eval.json").read_text()) == data
    assert (out / "scores.parquet").exists()


def test_synpref_eval_judgebench_json(tiny_rm):
    args = ["eval", "--model", str(tiny_rm), "--format", "judgebench"]
    result = runner.invoke(app, [*args, str(FIXTURES / "judgebench.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["format"] == "judgebench"
    assert data["count"] == 3
    assert {k: v["count"] for k, v in data["subsets"].items()} == {
        "knowledge": 1,
        "reasoning": 1,
        "coding": 1,
    }
    assert 0.0 <= data["overall"] <= 1.0
    assert 0.0 <= data["length_baseline"] <= 1.0


def test_synpref_eval_progress_on_stderr_keeps_json_stdout(tiny_rm):
    args = ["eval", "--model", str(tiny_rm), "--format", "judgebench", "--progress"]
    result = runner.invoke(app, [*args, str(FIXTURES / "judgebench.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 3
    assert "scoring" in result.stderr and "3/3" in result.stderr
    quiet = runner.invoke(app, [*args[:-1], "--quiet", str(FIXTURES / "judgebench.jsonl")])
    assert quiet.exit_code == 0, quiet.output
    assert "scoring" not in quiet.stderr


def test_progress_scoring_gives_score_table_numbers(tiny_rm):
    # Many short pairs and a small budget: several forward passes, each advancing the bar.
    from synpref_core.rm.evaluate import score_rewards
    from synpref_core.rm.model import load_reward_model
    from synpref_core.rm.scoring import score_table

    words = [" ".join(["word"] * (1 + i % 7)) for i in range(40)]
    pairs = pa.table(
        {
            "conversation": [[{"role": "user", "content": w}] for w in words],
            "chosen": [w + " yes" for w in words],
            "rejected": [w[: 1 + i] for i, w in enumerate(words)],
        }
    )
    model, tokenizer = load_reward_model(str(tiny_rm), dtype=torch.float32)
    expected = score_table(
        model,
        tokenizer,
        pairs["conversation"].to_pylist(),
        pairs["chosen"].to_pylist(),
        pairs["rejected"].to_pylist(),
        max_length=64,
        token_budget=128,
    )
    got = score_rewards(model, tokenizer, pairs, max_length=64, token_budget=128, progress=True)
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


def test_synpref_eval_errors_exit_2(tiny_rm, tmp_path):
    result = runner.invoke(
        app, ["eval", "--model", str(tiny_rm), "--format", "nope", str(FIXTURES / "rm-bench.json")]
    )
    assert result.exit_code == 2
    assert "unknown format" in result.output
    missing = str(tmp_path / "missing.jsonl")
    result = runner.invoke(app, ["eval", "--model", str(tiny_rm), "--format", "pairs", missing])
    assert result.exit_code == 2
    assert "no such file" in result.output
    no_model = ["eval", "--model", str(tmp_path / "no-model"), "--format", "rm-bench"]
    result = runner.invoke(app, [*no_model, str(FIXTURES / "rm-bench.json")])
    assert result.exit_code == 2
    assert "no such model directory" in result.output


# --------------------------------------------------------------------------------- MLflow


@pytest.fixture
def restore_mlflow_uri():
    import mlflow

    before = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(before)


def test_log_evaluation_to_mlflow(tmp_path, restore_mlflow_uri):
    import mlflow
    from mlflow.tracking import MlflowClient

    from synpref_core.config import TrackingConfig

    rows = rm_bench_item(1, "chat", lambda i, j: i >= j)
    result = score_results(table(rows), "rm-bench")
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="ev")
    run_id = log_evaluation(result, run_name="eval-test", tracking_config=tracking)

    client = MlflowClient(tracking_uri=tracking.tracking_uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "eval-test"
    metrics = run.data.metrics
    assert metrics["eval.rm-bench.overall"] == pytest.approx(result.overall)
    assert metrics["eval.rm-bench.length_baseline"] == pytest.approx(1 / 3)
    assert metrics["eval.rm-bench.subset.chat"] == pytest.approx(result.overall)
    assert metrics["eval.rm-bench.hard"] == 0.0
    assert metrics["eval.rm-bench.count"] == 9.0
    names = {a.path for a in client.list_artifacts(run_id, "eval/rm-bench")}
    assert names == {
        "eval/rm-bench/eval.json",
        "eval/rm-bench/eval.md",
        "eval/rm-bench/calibration.png",
    }
    local = client.download_artifacts(run_id, "eval/rm-bench", str(tmp_path / "dl"))
    assert json.loads(Path(local, "eval.json").read_text())["overall"] == result.overall
    assert Path(local, "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # With a run already active, the result goes to that run.
    with mlflow.start_run(experiment_id=run.info.experiment_id) as active:
        assert log_evaluation(result, prefix="bench") == active.info.run_id
    assert client.get_run(active.info.run_id).data.metrics["bench.overall"] == pytest.approx(
        result.overall
    )


def test_scores_are_numpy_friendly():
    # r columns may arrive as float32 / ints from a scorer: they are cast, not rejected.
    frame = table([pair(1.0, 0.0, "a")]).with_columns(
        pl.col("r_chosen").cast(pl.Float32), pl.col("r_rejected").cast(pl.Int64)
    )
    assert score_results(frame, "pairs").overall == 1.0
    assert np.isclose(score_results(frame.to_arrow(), "pairs").overall, 1.0)
