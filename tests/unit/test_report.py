"""``synpref report``: a demo summary with three plausible rounds renders as one self-contained
HTML page (no URL, every plot inline) and a Markdown twin with the same tables; bad input is one
line and exit 2; the files land on the summary's MLflow run."""

from __future__ import annotations

import re

import pytest

from synpref_core.report import render_report, write_report
from synpref_core.run_summary import (
    DemoSummary,
    RoundRecord,
    Stage1Summary,
    StepTime,
    write_json,
)
from tests.unit.test_cli_errors import assert_one_line_error, synpref


def _round(i: int) -> RoundRecord:
    judges = [("best", 0.70 + 0.02 * i), ("gold", 0.74 + 0.01 * i), ("ensemble", 0.78 + 0.02 * i)]
    rows = [
        {"judge": j, "slice": "all", "value": "all", "pairs": 120, "decided": 0.9, "accuracy": a}
        for j, a in judges
    ]
    rows += [
        {
            "judge": "ensemble",
            "slice": "objectivity",
            "value": v,
            "pairs": 60,
            "decided": 0.9,
            "accuracy": a,
        }
        for v, a in (("objective", 0.85 + 0.01 * i), ("subjective", 0.72 + 0.01 * i))
    ]
    rows.append(
        {
            "judge": "ensemble",
            "slice": "category",
            "value": "code",
            "pairs": 9,
            "decided": 1.0,
            "accuracy": 0.5,
        }
    )
    return RoundRecord(
        round=i,
        rm_dir=f"runs/round-{i}/best",
        mlflow_run_id=None,
        gold_accuracy=0.61 + 0.04 * i,
        gold_accuracy_by_category={"chat": 0.66 + 0.03 * i, "code": 0.55 + 0.05 * i},
        sizes={
            "gold": 200 + 150 * i,
            "silver": 800 * i,
            "flip_candidates": 90 + 10 * i,
            "undecided": 30 - 5 * i,
            "human_gold": 40 * i,
            "pool": 20_000,
        },
        retrieval={
            "queries": 60 - 10 * i,
            "queries_wrong": 25 - 5 * i,
            "candidates": 400 + 50 * i,
            "duplicates_removed": 12 + i,
            **{f"candidates_k{k}": 50 * k + i for k in (1, 2, 4, 8)},
        },
        judge={"agree": 150 + 20 * i, "disagree": 80, "undecided": 40 - 5 * i, "error": 2},
        judge_vs_gold=rows,
        human={
            "items": 50,
            "submitted": 48,
            "gold": 40,
            "swapped": 6,
            "discarded": 2,
            "pending": 2,
        },
        seconds=300.0 + 20 * i,
    )


def demo_summary(rounds: int = 3) -> DemoSummary:
    return DemoSummary(
        stage1=Stage1Summary(
            rounds=[_round(i) for i in range(1, rounds + 1)],
            gold="runs/demo/gold",
            silver="runs/demo/silver",
        ),
        stage2={
            "kept": 700,
            "flipped": 120,
            "discarded": 160,
            "quarantined": 3,
            "discarded:rm_disagree": 100,
            "discarded:judge_undecided": 60,
            "llm_checked": 280,
        },
        audit=[
            {
                "metric": "kept_correct",
                "share": 0.83,
                "ci_low": 0.79,
                "ci_high": 0.87,
                "blind": 0.8,
                "pairs": 425,
                "paper_human_audit": 0.86,
            },
            {
                "metric": "flipped_correct",
                "share": 0.3,
                "ci_low": 0.22,
                "ci_high": 0.38,
                "blind": 0.2,
                "pairs": 141,
                "paper_human_audit": 0.92,
            },
        ],
        evaluation=[
            {"benchmark": "llmbar", "accuracy": 0.62, "length_baseline": 0.48, "pairs": 419},
            {"benchmark": "rm-bench", "accuracy": 0.57, "length_baseline": 0.41, "pairs": 300},
        ],
        comparison=[
            {
                "model": "curated",
                "train_pairs": 820,
                "accuracy": 0.66,
                "lo": 0.61,
                "hi": 0.71,
                "pairs": 300,
            },
            {
                "model": "uncurated",
                "train_pairs": 983,
                "accuracy": 0.6,
                "lo": 0.55,
                "hi": 0.65,
                "pairs": 300,
            },
        ],
        steps=[
            StepTime(step="ingest", seconds=12.5),
            StepTime(step="stage1", seconds=980.0),
            StepTime(step="stage2", seconds=400.0, note="2 local judges"),
        ],
    )


def test_html_is_self_contained_with_every_plot_inline():
    report = render_report(demo_summary(), "runs/demo")
    html = report.html
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", html), "an external reference"
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html
    assert set(report.figures) == {
        "gold_accuracy",
        "set_sizes",
        "retrieval_k",
        "judge_drift",
        "stage2",
        "comparison",
    }
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', html)
    assert {name for name, _ in images} == set(report.figures)
    for png in report.figures.values():
        assert png.startswith(b"\x89PNG")
    for heading in (
        "Stage 1 rounds",
        "Retrieval",
        "Judges",
        "Human verification",
        "Stage 2: consistency filtering",
        "Stage 2 noise audit",
        "Final evaluation on the bundled benchmarks",
        "Curated vs uncurated",
        "Wall time",
    ):
        assert f"<h2>{heading}</h2>" in html
    assert "not recorded" not in html


def test_text_is_escaped():
    summary = demo_summary(1)
    summary.stage1.rounds[0].gold_accuracy_by_category["<b>code</b> & <script>"] = 0.5
    report = render_report(summary, "<i>runs</i>")
    assert "&lt;b&gt;code&lt;/b&gt; &amp; &lt;script&gt;" in report.html
    assert "<b>" not in report.html and "<script" not in report.html and "<i>" not in report.html
    assert "| &lt;b>code&lt;/b> & &lt;script> |" in report.markdown


def test_markdown_twin_has_the_tables_and_links_the_pngs(tmp_path):
    report = render_report(demo_summary())
    md = report.markdown
    assert "| round | overall | chat | code |" in md
    assert "| 3 | 73.0% | 75.0% | 70.0% |" in md  # gold accuracy of round 3
    assert "| round | queries | queries_wrong | candidates | duplicates_removed |" in md
    assert "| round | candidates_k1 | candidates_k2 | candidates_k4 | candidates_k8 |" in md
    assert "| 2 | ensemble | objective | 87.0% | 90.0% | 60 |" in md
    assert "| round | items | submitted | gold | swapped | discarded | pending |" in md
    assert "| rm_disagree | 100 |" in md
    assert "| kept_correct | 83.0% | 79.0% | 87.0% | 80.0% | 425 | 86.0% |" in md
    assert "40M-pair run" in md
    assert "| llmbar | 62.0% | 48.0% | 419 |" in md
    assert "| curated | 820 | 66.0% | 61.0% | 71.0% | 300 |" in md
    assert "| stage1 round 2 | 340.0 | within stage1 |" in md
    assert "code" in md and "| category |" not in md  # category slices are not in the drift
    paths = write_report(report, tmp_path)
    for name in report.figures:
        assert f"](report-{name}.png)" in md
        assert (tmp_path / f"report-{name}.png").read_bytes() == report.figures[name]
    assert {p.name for p in paths} >= {"report.html", "report.md"}


def test_empty_sections_say_not_recorded():
    bare = Stage1Summary(rounds=[RoundRecord(round=1, rm_dir="rm")])
    report = render_report(bare)
    assert report.figures == {}
    for what in (
        "Gold accuracy",
        "Set sizes",
        "Retrieval",
        "Judge outcomes",
        "Agreement with human gold",
        "Human verification",
        "Wall time",
    ):
        assert f"{what}: not recorded." in report.markdown
    assert "Stage 2" not in report.markdown  # a Stage 1 run has no demo sections


@pytest.mark.parametrize(
    ("content", "names"),
    [
        (None, ["missing"]),
        ("{not json", ["run.json", "not a run summary"]),
        ('{"unrelated": 1}', ["run.json", "not a run summary"]),
        ('{"rounds": [{"round": "x"}]}', ["run.json", "not a run summary"]),
        ("5", ["run.json"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, content, names):
    path = tmp_path / ("missing" if content is None else "run.json")
    if content is not None:
        path.write_text(content)
    assert_one_line_error(synpref("report", path), *names)


def test_an_empty_directory_is_refused(tmp_path):
    assert_one_line_error(synpref("report", tmp_path), "demo.json", "stage1.json")


def test_cli_writes_the_report_and_logs_it_to_the_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment).info.run_id
    summary = demo_summary(2).model_copy(update={"mlflow_run_id": run})
    write_json(summary, tmp_path / "demo" / "demo.json")
    done = synpref("report", tmp_path / "demo", "--out", tmp_path / "out", "--tracking-uri", uri)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "report.html").read_text().startswith("<!DOCTYPE html>")
    logged = {a.path for a in client.list_artifacts(run, "report")}
    assert {"report/report.html", "report/report.md", "report/report-gold_accuracy.png"} <= logged


def test_an_unknown_mlflow_run_is_one_line_after_writing(tmp_path):
    from mlflow.tracking import MlflowClient

    summary = demo_summary(1).model_copy(update={"mlflow_run_id": "0" * 32})
    write_json(summary, tmp_path / "demo.json")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # the database exists: no INFO lines
    done = synpref("report", tmp_path / "demo.json", "--tracking-uri", uri)
    assert_one_line_error(done, "0" * 32)
    assert (tmp_path / "report.html").exists()
