"""``synpref audit-stage2``: Stage 2's noise-injection audit from the command line.

    synpref audit-stage2                          # bundled hh-rlhf harmless, 20% flipped
    synpref audit-stage2 --noise 0.3 --seed 1 --config stage2.yaml --json

Runs the stage2 flow (:mod:`flows.stage2`) with ``audit_noise`` set: a seeded share of D_wild,
whose labels must be human, is flipped before scoring; Stage 2 runs unchanged; the curated rows
are joined back to the injected set (:mod:`synpref_core.curation.audit`). Prints the shares with
95% bootstrap intervals next to the paper's human audit (kept 86%, flipped 92%), which measured
the paper's own 40M-pair run against fresh human labels: comparable in kind, not one to one. The
same metrics and table go to the flow's MLflow run. Kept in its own module so the main CLI stays
small; Prefect and the flow are imported only when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

AUDIT_OUT = ".synpref/stage2-audit"  # the embedded default's own dir: never a real run's stages
BLIND_NOTE = "blind: a filter blind to content, with the same kept / flipped / discarded rates"
PAPER_NOTE = (
    "paper: Skywork-Reward-V2's human audit of its own 40M-pair Stage 2 output (kept pairs agreed "
    "with humans 86%, flipped 92%); here: the source's human labels, with injected noise, on "
    "this run's data and RMs, so comparable in kind, not one to one"
)


def audit_stage2(
    noise: Annotated[
        float | None, typer.Option(help="Share of D_wild flipped (default: config's, else 0.2).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Salt of which pairs flip (default 0).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="A Stage2FlowConfig YAML (default: embedded, bundled).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the audit as JSON.")] = False,
) -> None:
    """Flip a seeded share of a human-labelled D_wild, run Stage 2, and measure how much of the
    noise it removes or repairs (shares with 95% bootstrap intervals; also logged to MLflow)."""
    from synpref_core.cli import _fail
    from synpref_core.config import ConfigError, describe_invalid

    if noise is not None and not 0 < noise < 1:
        raise _fail(f"--noise must be a share in (0, 1), got {noise}")
    try:
        chosen = audit_config(config, noise, seed)
        summary = _run(chosen)
    except ValidationError as exc:
        raise _fail(describe_invalid(exc)) from exc
    except ConfigError as exc:
        raise _fail(str(exc)) from exc
    report = {
        "noise": chosen.audit_noise, "seed": chosen.audit_seed, "curated": summary["curated"],
        "counts": summary["audit"].counts, "metrics": summary["audit"].metrics,
    }  # fmt: skip
    if as_json:
        typer.echo(json.dumps({**report, "paper_note": PAPER_NOTE}, indent=2))
    else:
        print_audit(report)


def audit_config(path: Path | None, noise: float | None, seed: int | None) -> Any:
    """The Stage2FlowConfig of an audit: the YAML's (or the embedded one, in its own ``out``)
    with the noise and seed given here; validated, so a bad --noise fails by field name."""
    from flows.stage2 import Stage2FlowConfig
    from synpref_core.config import load_config

    base = load_config(path, Stage2FlowConfig) if path else Stage2FlowConfig(out=AUDIT_OUT)
    update = {
        "audit_noise": noise if noise is not None else (base.audit_noise or 0.2),
        "audit_seed": seed if seed is not None else base.audit_seed,
    }
    return Stage2FlowConfig.model_validate({**base.model_dump(), **update})


def _run(config: Any) -> dict[str, Any]:
    """The flow, with its boundary errors as one-line exits."""
    from flows.stage2 import preflight, stage2_flow
    from synpref_core.annotate.client import EndpointDownError
    from synpref_core.cli import _fail
    from synpref_core.rm.model import NotARewardModelError
    from synpref_core.rm.registry import ModelNotFoundError
    from synpref_core.stages import StageError

    try:
        preflight(config)
        return stage2_flow(config)
    except (StageError, NotARewardModelError, ModelNotFoundError, EndpointDownError) as exc:
        raise _fail(str(exc)) from exc


def print_audit(report: dict[str, Any]) -> None:
    """The audit as a table, the paper's figures beside, and what they are."""
    from synpref_core.curation.audit import PAPER

    counts = report["counts"]
    injected = sum(v for k, v in counts.items() if k.startswith("injected."))
    total = sum(counts.values())
    title = (
        f"Stage 2 audit: {injected} of {total} pairs flipped "
        f"(noise {report['noise']}, seed {report['seed']})"
    )
    table = Table(title=title)
    for column in ("metric", "share", "95% CI", "blind†", "pairs", "paper*"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, m in report["metrics"].items():
        share = "–" if m["share"] is None else f"{100 * m['share']:.1f}%"
        ci = "–" if m["share"] is None else f"{100 * m['ci_low']:.1f}–{100 * m['ci_high']:.1f}"
        paper = f"{PAPER[name]:.0%}" if name in PAPER else ""
        blind = "–" if m["blind"] is None else f"{100 * m['blind']:.1f}%"
        table.add_row(name, share, ci, blind, f"{m['pairs']:,}", paper)
    console = Console()
    console.print(table)
    console.print("outcomes: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), soft_wrap=True)
    console.print(f"† {BLIND_NOTE}", soft_wrap=True)
    console.print(f"* {PAPER_NOTE}", soft_wrap=True)
    console.print(f"curated pairs (every pair with its status): {report['curated']}")
