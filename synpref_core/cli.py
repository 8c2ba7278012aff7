"""The synpref command line: ingest, inspect and export preference pairs; evaluate a reward model.

    synpref ingest --format hh-rlhf data/hh-rlhf/harmless-base/test.jsonl.gz --out OUT
    synpref ingest --config ingest.yaml            # several sources, decontamination, ...
    synpref inspect OUT --json
    synpref export OUT --out pairs.parquet
    synpref eval --model RM_DIR --format llmbar data/llmbar/Dataset --json
    synpref serve-judge --model best=RM_DIR --model gold=GOLD_RM_DIR --port 8008
    synpref judge-calibrate GOLD_STAGE --judge best=RM_DIR --store .synpref/vectors
    synpref judge-calibrate GOLD_STAGE --panel panel.yaml   # real endpoints (a JudgePanel YAML)
    synpref audit-stage2 --noise 0.2 --seed 0           # Stage 2's noise-injection audit
    synpref annotate-user ana ben --role annotator --credentials accounts.json
    synpref annotate-batch PAIRS --name round-1 --annotator ana --annotator ben --overlap 2
    synpref annotate-ui                            # human verification on http://127.0.0.1:8765
    synpref annotate-export --out .synpref/human-gold
    synpref replay-humans --dataset pandalm --data data/pandalm/testset-v1.json --credentials F
    synpref report .synpref/demo                   # report.html + report.md of a run or the demo

``ingest`` runs the same stages as the Prefect flow, in this process (or on Ray with
``--executor ray``), without a Prefect server or MLflow: the quick path for a laptop.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, get_args

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from synpref_core.config import (
    FORMATS,
    ConfigError,
    DecontamConfig,
    ExecutorConfig,
    IngestConfig,
    SourceSpec,
    describe_invalid,
    load_config,
)
from synpref_core.human.commands import register_human_commands
from synpref_core.rm.eval_results import EVAL_FORMATS, DtypeComparison, EvalResult

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code=2)


@app.command()
def ingest(
    inputs: Annotated[list[str] | None, typer.Argument(help="Files, globs or directories.")] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help=f"One of: {', '.join(FORMATS)}.")
    ] = None,
    out: Annotated[str | None, typer.Option(help="Output directory or URI.")] = None,
    status: Annotated[str, typer.Option(help="'unverified' or 'gold'.")] = "unverified",
    name: Annotated[str | None, typer.Option(help="Source name on rows (default: format).")] = None,
    benchmark: Annotated[
        list[str] | None,
        typer.Option(help="FORMAT:PATH of benchmark prompts to decontaminate against; repeatable."),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="An IngestConfig YAML instead.")] = None,
    executor: Annotated[str, typer.Option(help="'local' or 'ray'.")] = "local",
    workers: Annotated[int, typer.Option(help="Local worker processes.")] = 1,
) -> None:
    """Ingest, validate, decontaminate and deduplicate preference pairs into Parquet shards."""
    from synpref_core.ingest.pipeline import ingest_counts, run_ingest
    from synpref_core.ingest.readers import MalformedInputError
    from synpref_core.io.lock import LockedError
    from synpref_core.stages import StageError

    try:
        cfg = _ingest_config(inputs, fmt, out, status, name, benchmark, config)
        runner = ExecutorConfig(kind=executor, workers=workers)
    except ValidationError as exc:
        raise _fail(describe_invalid(exc)) from exc
    except (ConfigError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    try:
        _check_out_dir(cfg.out)
        run_ingest(cfg, runner, progress=sys.stderr.isatty())
    except (MalformedInputError, StageError, LockedError) as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(_os_error(exc, cfg.out)) from exc
    except KeyboardInterrupt:
        raise _interrupted(cfg.out) from None
    print_counts(ingest_counts(cfg.out), cfg.out)


def _check_out_dir(out: str) -> None:
    from synpref_core.stages import StageError

    if "://" not in out and Path(out).exists() and not Path(out).is_dir():
        raise StageError(f"{out}: exists and is not a directory; give a directory for --out")


def _os_error(exc: OSError, target: str) -> str:
    """One line for a filesystem failure: the path and the reason."""
    where = exc.filename or target
    return f"{where}: cannot write there: {exc.strerror or str(exc).splitlines()[0]}"


def _interrupted(out: str) -> typer.Exit:
    """Ctrl-C: one line saying what was kept; exit 130 (128 + SIGINT), as shells expect."""
    kept = "finished shards are kept"
    if "://" not in out:
        shards = len(list(Path(out).glob("_markers/*.json")))
        shards += len(list(Path(out).glob("_stages/*/_markers/*.json")))
        kept = f"{shards} finished shards are kept in {out}"
    err.print(f"interrupted: {kept}; run the same command again to resume", soft_wrap=True)
    return typer.Exit(code=130)


def _ingest_config(inputs, fmt, out, status, name, benchmark, config) -> IngestConfig:
    if config is not None:
        if inputs or fmt:
            raise ValueError("give either --config or --format with inputs, not both")
        cfg = load_config(config, IngestConfig)
        return cfg.model_copy(update={"out": out}) if out else cfg
    if not inputs or not fmt:
        raise ValueError("give --format FORMAT and at least one input (or --config)")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if out is None:
        raise ValueError("give --out DIR")
    benchmarks = []
    for item in benchmark or []:
        bench_fmt, _, path = item.partition(":")
        if not path:
            raise ValueError(f"--benchmark wants FORMAT:PATH, got {item!r}")
        benchmarks.append(SourceSpec(format=bench_fmt, paths=[path]))
    return IngestConfig(
        sources=[SourceSpec(format=fmt, paths=inputs, status=status, name=name)],
        out=out,
        decontamination=DecontamConfig(benchmarks=benchmarks),
    )


def print_counts(counts: dict[str, int], out: str) -> None:
    """The counts of a stage output as a table on stdout (``synpref inspect``, ``make demo``)."""
    table = Table(title=f"ingest → {out}")
    table.add_column("outcome")
    table.add_column("rows", justify="right")
    for key in sorted(counts):
        table.add_row(key, f"{counts[key]:,}")
    Console().print(table)


@app.command()
def inspect(
    directory: Annotated[str, typer.Argument(help="A stage output directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Print a stage output's counts (from its manifest)."""
    from synpref_core.stages import StageError, load_manifest

    try:
        manifest = load_manifest(directory)
    except StageError as exc:
        raise _fail(str(exc)) from exc
    counts = {"input_rows": 0, "rows": 0, "quarantined": 0, "duplicates": 0, "contaminated": 0}
    counts.update(manifest.counts)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    **counts,
                    "stage": manifest.stage,
                    "run_id": manifest.run_id,
                    "files": len(manifest.files),
                },
                indent=2,
                sort_keys=True,
            )
        )
    else:
        print_counts(counts, directory)


@app.command()
def export(
    directory: Annotated[str, typer.Argument(help="A stage output directory.")],
    out: Annotated[str, typer.Option(help="Output Parquet file.")],
    status: Annotated[list[str] | None, typer.Option(help="Only these statuses.")] = None,
) -> None:
    """Export pairs as TRL / OpenRLHF preference rows (chosen/rejected message lists)."""
    from synpref_core.export import export_pairs
    from synpref_core.schema import Status
    from synpref_core.stages import StageError

    unknown = sorted(set(status or []) - set(get_args(Status)))
    if unknown:
        raise _fail(
            f"unknown --status {', '.join(unknown)}; choose from {', '.join(get_args(Status))}"
        )
    if Path(out).is_dir():
        raise _fail(f"{out}: is a directory; give a .parquet file name for --out")
    try:
        rows = export_pairs(directory, out, status)
    except StageError as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(_os_error(exc, out)) from exc
    Console().print(f"wrote {rows:,} pairs to {out}")


@app.command("eval")
def eval_(
    data: Annotated[list[str], typer.Argument(help="Benchmark files, globs or directories.")],
    model: Annotated[str, typer.Option(help="Reward model directory (Hugging Face format).")],
    fmt: Annotated[str, typer.Option("--format", help=f"One of: {', '.join(EVAL_FORMATS)}.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    out: Annotated[
        str | None, typer.Option(help="Keep pairs, scores and eval.json here (default: temp).")
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(help="Tokens per (prompt, response); default: the model's training length."),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--quiet",
            help="Show scoring progress on stderr (default: when stderr is a terminal).",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto (CUDA when there is a GPU), cpu or cuda.")
    ] = "auto",
    dtype: Annotated[
        str,
        typer.Option(help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16."),
    ] = "auto",
    compare_dtype: Annotated[
        bool,
        typer.Option(
            "--compare-dtype",
            help="Also score in float32 and bfloat16 and report decision agreement and |Δp|.",
        ),
    ] = False,
) -> None:
    """Score a benchmark with a reward model: accuracy per subset beside a length baseline."""
    import tempfile

    from synpref_core.ingest.readers import MalformedInputError
    from synpref_core.rm.benchmarks import EvaluationError
    from synpref_core.rm.evaluate import evaluate
    from synpref_core.stages import StageError

    if fmt not in EVAL_FORMATS:
        raise _fail(f"unknown format {fmt!r}; choose one of {', '.join(EVAL_FORMATS)}")
    if device not in ("auto", "cpu", "cuda"):
        raise _fail(f"unknown device {device!r}; choose one of auto, cpu, cuda")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise _fail(f"unknown dtype {dtype!r}; choose one of auto, float32, bfloat16, float16")
    missing = [p for p in data if "://" not in p and not any(c in p for c in "*?[")]
    missing = [p for p in missing if not Path(p).exists()]
    if missing:
        raise _fail(f"{missing[0]}: no such file")
    from synpref_core.rm.model import resolve_backbone

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise _fail("--device cuda, but this machine has no CUDA device")

    if not Path(resolve_backbone(model)).is_dir():
        raise _fail(f"{model}: no such model directory")
    show = sys.stderr.isatty() if progress is None else progress
    with tempfile.TemporaryDirectory(prefix="synpref-eval-") as scratch:
        try:
            result = evaluate(
                model, fmt, data, out or scratch, max_length, progress=show,
                device=device, dtype=dtype, compare_dtype=compare_dtype,
            )  # fmt: skip
        except (EvaluationError, MalformedInputError, StageError, OSError) as exc:
            raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(result.json_dict(), indent=2))
    else:
        _print_result(result)
        if result.dtype_comparison is not None:
            _print_dtype_comparison(result.dtype_comparison)


def _print_result(result: EvalResult) -> None:
    overall = _pct(result.overall)
    table = Table(title=f"{result.format}: overall {overall}, {result.count} pairs")
    table.add_column("subset")
    table.add_column("accuracy", justify="right")
    table.add_column("length baseline", justify="right")
    table.add_column("pairs", justify="right")
    for name, block in result.subsets.items():
        table.add_row(name, _pct(block.accuracy), _pct(block.length_baseline), f"{block.count:,}")
    table.add_row("overall", overall, _pct(result.length_baseline), "")
    Console().print(table)


def _print_dtype_comparison(comparison: DtypeComparison) -> None:
    c = comparison
    table = Table(title=f"{c.other} against {c.reference} on {c.device}, {c.pairs:,} pairs")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("decisions that agree", _pct(c.decision_agreement))
    table.add_row("decisions flipped", f"{c.flipped:,}")
    table.add_row(f"  of them near a tie (|p − 0.5| < {c.near_tie})", f"{c.flipped_near_ties:,}")
    margin = "–" if c.flipped_max_margin is None else f"{c.flipped_max_margin:.4f}"
    table.add_row("  largest |p − 0.5| of a flipped one", margin)
    table.add_row("max |Δp|", "–" if c.max_abs_dp is None else f"{c.max_abs_dp:.4f}")
    table.add_row("mean |Δp|", "–" if c.mean_abs_dp is None else f"{c.mean_abs_dp:.5f}")
    for name, seconds in c.seconds.items():
        table.add_row(f"seconds in {name} (load + score)", f"{seconds:.1f}")
    Console().print(table)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


@app.command("serve-judge")
def serve_judge(
    model: Annotated[
        list[str],
        typer.Option(help="NAME=DIR: serve reward model DIR as judge model NAME; repeatable."),
    ],
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8008,
) -> None:
    """Serve reward models as an OpenAI-compatible judge endpoint (a stand-in for LLM judges)."""
    import uvicorn

    from synpref_core.annotate.judge_server import create_app

    try:
        models = _name_paths(model, "--model")
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    judge = create_app(models)
    err.print(f"judge models {', '.join(models)} at http://{host}:{port}/v1", soft_wrap=True)
    uvicorn.run(judge, host=host, port=port, log_level="info")


@app.command("judge-calibrate")
def judge_calibrate(
    gold: Annotated[str, typer.Argument(help="A finished pairs stage of gold (human) pairs.")],
    judge: Annotated[
        list[str] | None,
        typer.Option(help="NAME=RM_DIR: a local judge (stand-in) served for this run; repeatable."),
    ] = None,
    panel: Annotated[
        Path | None, typer.Option(help="A JudgePanel YAML (endpoints, samples...) instead.")
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="Vector store of the gold few-shot; omit: zero-shot.")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="Samples per judge (default 5).")] = None,
    out: Annotated[str, typer.Option(help="Where the judgements go.")] = ".synpref/calibration",
    cache_dir: Annotated[
        str | None, typer.Option(help="Request cache (default: the panel's, .synpref/judge-cache).")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow URI (default: SQLite under .synpref).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
) -> None:
    """Measure each judge and the ensemble against the human verdicts of gold pairs (overall,
    per category, per objectivity); logged to MLflow as metrics and a table."""
    from synpref_core import tracking
    from synpref_core.annotate.calibrate import calibrate_judges
    from synpref_core.annotate.client import EndpointDownError
    from synpref_core.annotate.panel import JudgePanel
    from synpref_core.annotate.stages import JudgeConfig
    from synpref_core.config import TrackingConfig
    from synpref_core.retrieval.store import StoreConfig
    from synpref_core.stages import StageError

    try:
        judges = _name_paths(judge or [], "--judge")
        chosen = load_config(panel, JudgePanel) if panel else JudgePanel(local_models=judges)
        if samples is not None:
            chosen = chosen.model_copy(update={"samples": samples})
        if cache_dir is not None:
            chosen = chosen.model_copy(update={"cache_dir": cache_dir})
        if not chosen.endpoints and not chosen.local_models:
            raise ValueError(
                "give --judge NAME=RM_DIR (a local stand-in) or --panel with endpoints"
            )
        config = JudgeConfig(
            pairs=gold,
            panel=chosen,
            store=StoreConfig(uri=store) if store else None,
            out=out,
        )
        with tracking.start_run(TrackingConfig(tracking_uri=tracking_uri), "judge-calibrate"):
            tracking.log_config(config)
            result = calibrate_judges(config)
            tracking.log_metrics(result.metrics)
            tracking.log_table(result.table.to_dicts(), "judge_calibration.json")
    except ValidationError as exc:
        raise _fail(describe_invalid(exc)) from exc
    except (ConfigError, StageError, EndpointDownError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        print(json.dumps(result.table.to_dicts(), indent=2))
        return
    table = Table(title=f"judges against human verdicts: {gold}")
    for column in ("judge", "slice", "value", "pairs", "accuracy", "decided"):
        table.add_column(column, justify="right" if column in ("pairs", "accuracy") else "left")
    for row in result.table.iter_rows(named=True):
        table.add_row(
            row["judge"], row["slice"], row["value"], str(row["pairs"]),
            f"{row['accuracy']:.3f}", f"{row['decided']:.2f}",
        )  # fmt: skip
    Console().print(table)


def _name_paths(items: list[str], flag: str) -> dict[str, str]:
    """NAME=DIR options as a dict; one line naming the first bad one."""
    pairs = [item.partition("=") for item in items]
    if bad := [name + eq + path for name, eq, path in pairs if not (name and eq and path)]:
        raise ValueError(f"{flag} wants NAME=DIR, got {bad[0]!r}")
    from synpref_core.rm.model import resolve_backbone

    named = {name: path for name, _, path in pairs}
    if missing := [d for d in named.values() if not Path(resolve_backbone(d)).is_dir()]:
        raise ValueError(f"{missing[0]}: no such model directory")
    return named


@app.command()
def report(
    run: Annotated[
        str, typer.Argument(metavar="RUN", help="A run directory, or its demo.json / stage1.json.")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Where report.html and report.md go (default: beside RUN).")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow URI (default: SQLite under .synpref).")
    ] = None,
) -> None:
    """Render a Stage 1 run or the demo as one self-contained HTML page and its Markdown twin;
    attach both to the summary's MLflow run when it names one."""
    from synpref_core.report import log_report, render_report, run_id, write_report
    from synpref_core.run_summary import load_summary

    try:
        summary = load_summary(run)
    except (OSError, ValueError, TypeError) as exc:  # JSON and pydantic errors are ValueErrors
        raise _fail(f"{run}: not a run summary: {str(exc).splitlines()[0]}") from exc
    if not summary.model_fields_set:
        raise _fail(f"{run}: not a run summary (no stage1 or rounds)")
    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    try:
        paths = write_report(render_report(summary, str(run)), out or folder)
    except OSError as exc:
        raise _fail(_os_error(exc, str(out or folder))) from exc
    if (mlflow_run := run_id(summary)) is not None:
        from mlflow.exceptions import MlflowException

        try:
            log_report(paths, mlflow_run, tracking_uri)
        except MlflowException as exc:
            raise _fail(f"report written, but not logged to MLflow run {mlflow_run}: "
                        f"{str(exc).splitlines()[0]}") from exc  # fmt: skip
    Console().print(f"wrote {paths[0]} and {paths[1]}")


# In its own module (it runs the stage2 flow); registered last, as it uses _fail.
from synpref_core.cli_audit import audit_stage2  # noqa: E402

app.command("audit-stage2")(audit_stage2)

# Human verification: annotate-ui, annotate-user, annotate-batch, annotate-export, replay-humans.
register_human_commands(app)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":
    main()
