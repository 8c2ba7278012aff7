"""The run report: a Stage 1 run (``stage1.json``) or the demo (``demo.json``) as one
self-contained HTML page and its Markdown twin.

    synpref report .synpref/demo                  # → .synpref/demo/report.html, report.md
    synpref report .synpref/stage1/stage1.json --out reports/

:func:`render_report` is pure: summary in, :class:`Report` out (HTML string, Markdown string,
PNG figures). The HTML embeds every plot as a base64 PNG and its CSS inline, and names no URL,
so it opens offline and can be mailed as one file; the Markdown shows the same tables and links
the PNGs :func:`write_report` writes beside it (``report-<figure>.png``). :func:`log_report`
attaches the files to the summary's MLflow run. Sections without data say "not recorded".
The file is long because each of the nine sections has its own small builder; they share the
table and figure helpers above them and one renderer per format below.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synpref_core.run_summary import DemoSummary, RoundRecord, Stage1Summary

SIZE_KEYS = ("gold", "silver", "flip_candidates", "undecided", "human_gold")
RETRIEVAL_KEYS = ("queries", "queries_wrong", "candidates", "duplicates_removed")
JUDGE_KEYS = ("agree", "disagree", "undecided", "error")
HUMAN_KEYS = ("items", "submitted", "gold", "swapped", "discarded", "pending")
STAGE2_KEYS = ("kept", "flipped", "discarded", "quarantined")
# Shares (0..1) shown as percentages wherever a table carries them.
SHARE_KEYS = {"share", "lo", "hi", "ci_low", "ci_high", "blind", "accuracy", "length_baseline",
              "decided"}  # fmt: skip
PAPER_CAVEAT = (
    "The paper's figures (kept 86%, flipped 92%) are Skywork-Reward-V2's human audit of its own "
    "40M-pair run, with its own RMs and judges: comparable in kind, not one to one."
)


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """An ``<h2>`` with its blocks in order: ("h3", text), ("table", Table), ("figure", name),
    ("note", text)."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class Report:
    html: str
    markdown: str
    figures: dict[str, bytes]  # name → PNG


# -- formatting --------------------------------------------------------------------------------


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}%"


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key in SHARE_KEYS and isinstance(value, int | float) and not isinstance(value, bool):
        return _pct(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _keys(known: tuple[str, ...], dicts: list[dict[str, Any]], extra: bool = False) -> list[str]:
    """The known keys present in any of ``dicts``, in order; with ``extra``, then the others."""
    seen = {k for d in dicts for k in d}
    keys = [k for k in known if k in seen]
    if extra:
        keys += sorted(seen - set(keys))
    return keys


def _round_table(rounds: list[RoundRecord], keys: list[str], attr: str) -> Table:
    return Table(
        ["round", *keys],
        [[str(r.round), *(_cell(k, getattr(r, attr).get(k)) for k in keys)] for r in rounds],
    )


def _rows_table(rows: list[dict[str, Any]], drop: tuple[str, ...] = ()) -> Table:
    columns = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in drop]
    return Table(columns, [[_cell(k, row.get(k)) for k in columns] for row in rows])


# -- figures -----------------------------------------------------------------------------------


def _figure(width: float = 7.0, height: float = 3.2) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state, no display

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _lines(x: list[int], series: dict[str, list[float | None]], ylabel: str, pct: bool) -> bytes:
    from matplotlib.ticker import PercentFormatter

    fig, ax = _figure()
    for label, ys in series.items():
        points = [(a, b) for a, b in zip(x, ys, strict=True) if b is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_xticks(x)
    ax.set_ylabel(ylabel)
    if pct:
        ax.set_ylim(0, 1)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)


def _bars(groups: list[str], series: dict[str, list[float]], ylabel: str) -> bytes:
    """Grouped bars: one group per entry of ``groups``, one bar per series."""
    fig, ax = _figure()
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=label)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)
    if max(map(len, groups)) > 10:  # long labels (discard reasons) would overlap
        ax.tick_params(axis="x", labelrotation=25)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    if len(series) > 1:
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)


# -- sections ----------------------------------------------------------------------------------


def _rounds_section(rounds: list[RoundRecord], figs: dict[str, bytes]) -> Section:
    section = Section("Stage 1 rounds")
    x = [r.round for r in rounds]
    cats = sorted({c for r in rounds for c in r.gold_accuracy_by_category})
    section.blocks.append(("h3", "Gold accuracy of the best RM"))
    if any(r.gold_accuracy is not None for r in rounds) or cats:
        section.blocks.append(("table", Table(
            ["round", "overall", *cats],
            [[str(r.round), _pct(r.gold_accuracy),
              *(_pct(r.gold_accuracy_by_category.get(c)) for c in cats)] for r in rounds],
        )))  # fmt: skip
        series = {"overall": [r.gold_accuracy for r in rounds]}
        series |= {c: [r.gold_accuracy_by_category.get(c) for r in rounds] for c in cats}
        figs["gold_accuracy"] = _lines(x, series, "accuracy on D_gold", pct=True)
        section.blocks.append(("figure", "gold_accuracy"))
    else:
        section.blocks.append(("note", "Gold accuracy: not recorded."))
    section.blocks.append(("h3", "Set sizes"))
    keys = _keys(SIZE_KEYS, [r.sizes for r in rounds], extra=True)
    if keys:
        section.blocks.append(("table", _round_table(rounds, keys, "sizes")))
        plotted = [k for k in keys if k != "pool"]  # the pool dwarfs the sets
        series = {k: [r.sizes.get(k) for r in rounds] for k in plotted}
        figs["set_sizes"] = _lines(x, series, "pairs", pct=False)
        section.blocks.append(("figure", "set_sizes"))
    else:
        section.blocks.append(("note", "Set sizes: not recorded."))
    return section


def _retrieval_section(rounds: list[RoundRecord], figs: dict[str, bytes]) -> Section:
    section = Section("Retrieval")
    records = [r.retrieval for r in rounds]
    keys = _keys(RETRIEVAL_KEYS, records)
    if not any(records):
        section.blocks.append(("note", "Retrieval: not recorded."))
        return section
    if keys:
        section.blocks.append(("table", _round_table(rounds, keys, "retrieval")))
    ks = sorted({k for d in records for k in d if k.startswith("candidates_k")},
                key=lambda k: int(k.removeprefix("candidates_k") or 0))  # fmt: skip
    section.blocks.append(("h3", "Adaptive k: candidates retrieved at each k"))
    if ks:
        section.blocks.append(("table", _round_table(rounds, ks, "retrieval")))
        series = {f"round {r.round}": [r.retrieval.get(k, 0) for k in ks] for r in rounds}
        figs["retrieval_k"] = _bars([k.removeprefix("candidates_") for k in ks], series,
                                    "candidates")  # fmt: skip
        section.blocks.append(("figure", "retrieval_k"))
    else:
        section.blocks.append(("note", "k histogram: not recorded."))
    return section


def _slice_label(row: dict[str, Any]) -> str | None:
    """'all', 'objective' or 'subjective' for the rows the drift plot shows; None for others."""
    slice_, value = row.get("slice"), row.get("value")
    if slice_ == "all":
        return "all"
    if slice_ in ("objective", "subjective"):
        return slice_
    if slice_ == "objectivity" and value in ("objective", "subjective"):
        return value
    return None


def _judges_section(rounds: list[RoundRecord], figs: dict[str, bytes]) -> Section:
    section = Section("Judges")
    section.blocks.append(("h3", "Outcomes of the flip candidates"))
    keys = _keys(JUDGE_KEYS, [r.judge for r in rounds], extra=True)
    if keys:
        section.blocks.append(("table", _round_table(rounds, keys, "judge")))
    else:
        section.blocks.append(("note", "Judge outcomes: not recorded."))
    section.blocks.append(("h3", "Agreement with human gold"))
    rows, series = [], {}
    for r in rounds:
        for row in r.judge_vs_gold:
            label = _slice_label(row)
            if label is None:
                continue
            rows.append([str(r.round), str(row.get("judge", "?")), label,
                         _pct(row.get("accuracy")), _pct(row.get("decided")),
                         _cell("pairs", row.get("pairs"))])  # fmt: skip
            name = f"{row.get('judge', '?')} ({label})"
            series.setdefault(name, {})[r.round] = row.get("accuracy")
    if not rows:
        section.blocks.append(("note", "Agreement with human gold: not recorded."))
        return section
    section.blocks.append(
        ("table", Table(["round", "judge", "slice", "accuracy", "decided", "pairs"], rows))
    )
    x = [r.round for r in rounds]
    lines = {name: [by_round.get(i) for i in x] for name, by_round in series.items()}
    figs["judge_drift"] = _lines(x, lines, "agreement with human gold", pct=True)
    section.blocks.append(("figure", "judge_drift"))
    return section


def _human_section(rounds: list[RoundRecord]) -> Section:
    section = Section("Human verification")
    keys = _keys(HUMAN_KEYS, [r.human for r in rounds], extra=True)
    if keys:
        section.blocks.append(("table", _round_table(rounds, keys, "human")))
    else:
        section.blocks.append(("note", "Human verification: not recorded."))
    return section


def _stage2_section(stage2: dict[str, int], figs: dict[str, bytes]) -> Section:
    section = Section("Stage 2: consistency filtering")
    if not stage2:
        section.blocks.append(("note", "Stage 2: not recorded."))
        return section
    outcomes = [k for k in STAGE2_KEYS if k in stage2]
    reasons = sorted(k for k in stage2 if k.startswith("discarded:"))
    others = sorted(set(stage2) - set(outcomes) - set(reasons))
    rows = [[k, _cell(k, stage2[k])] for k in (*outcomes, *others)]
    section.blocks.append(("table", Table(["outcome", "pairs"], rows)))
    if reasons:
        section.blocks.append(("h3", "Discard reasons"))
        rows = [[k.removeprefix("discarded:"), _cell(k, stage2[k])] for k in reasons]
        section.blocks.append(("table", Table(["reason", "pairs"], rows)))
    labels = outcomes + reasons
    if labels:
        figs["stage2"] = _bars([k.replace("discarded:", "discarded: ") for k in labels],
                               {"pairs": [stage2[k] for k in labels]}, "pairs")  # fmt: skip
        section.blocks.append(("figure", "stage2"))
    return section


def _audit_section(audit: list[dict[str, Any]]) -> Section:
    from synpref_core.curation.audit import PAPER

    section = Section("Stage 2 noise audit")
    if not audit:
        section.blocks.append(("note", "Noise audit: not recorded."))
        return section
    table = _rows_table(audit, drop=("paper_human_audit",))
    table.columns.append("paper (human audit)")
    for row, cells in zip(audit, table.rows, strict=True):
        name = row.get("metric", row.get("measure"))
        cells.append(_pct(PAPER[name]) if name in PAPER else "")
    section.blocks += [("table", table), ("note", PAPER_CAVEAT)]
    return section


def _evaluation_section(evaluation: list[dict[str, Any]]) -> Section:
    section = Section("Final evaluation on the bundled benchmarks")
    if not evaluation:
        section.blocks.append(("note", "Final evaluation: not recorded."))
        return section
    section.blocks.append(("table", _rows_table(evaluation)))
    section.blocks.append(("note", "length_baseline: the longer response wins, no model."))
    return section


def _whisker(top: Any, bottom: Any) -> float:
    return 0.0 if top is None or bottom is None else max(0.0, float(top) - float(bottom))


def _comparison_section(comparison: list[dict[str, Any]], figs: dict[str, bytes]) -> Section:
    section = Section("Curated vs uncurated")
    if not comparison:
        section.blocks.append(("note", "Curated vs uncurated comparison: not recorded."))
        return section
    section.blocks.append(("table", _rows_table(comparison)))
    names = [str(row.get("model", i)) for i, row in enumerate(comparison)]
    acc = [float(row.get("accuracy") or 0.0) for row in comparison]
    # Whiskers from the intervals; a missing bound draws none (and bad data no negative one).
    lo = [_whisker(a, row.get("lo")) for a, row in zip(acc, comparison, strict=True)]
    hi = [_whisker(row.get("hi"), a) for a, row in zip(acc, comparison, strict=True)]
    from matplotlib.ticker import PercentFormatter

    fig, ax = _figure(6, 2.8)
    ax.errorbar(range(len(names)), acc, yerr=[lo, hi], fmt="o", capsize=6)
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylabel("accuracy on held-out human pairs")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3, axis="y")
    figs["comparison"] = _png(fig)
    section.blocks += [
        ("figure", "comparison"),
        ("note", "Bars: 95% bootstrap interval (lo, hi) over the held-out pairs."),
    ]
    return section


def _steps_section(summary: Stage1Summary | DemoSummary, rounds: list[RoundRecord]) -> Section:
    section = Section("Wall time")
    rows = []
    if isinstance(summary, DemoSummary):
        rows += [[s.step, f"{s.seconds:,.1f}", s.note] for s in summary.steps]
    within = "within stage1" if rows else ""
    rows += [[f"stage1 round {r.round}", f"{r.seconds:,.1f}", within] for r in rounds if r.seconds]
    if rows:
        section.blocks.append(("table", Table(["step", "seconds", "note"], rows)))
    else:
        section.blocks.append(("note", "Wall time: not recorded."))
    steps = list(dict.fromkeys(k for r in rounds for k in r.timings))
    if steps:  # where each round's time goes
        section.blocks.append(("h3", "Seconds per step of each round"))
        table = [[str(r.round), *(f"{r.timings.get(k, 0.0):,.1f}" for k in steps)] for r in rounds]
        section.blocks.append(("table", Table(["round", *steps], table)))
    return section


# -- rendering ---------------------------------------------------------------------------------


def run_id(summary: Stage1Summary | DemoSummary) -> str | None:
    """The MLflow run the report belongs to (the demo's, else its Stage 1 run's)."""
    if isinstance(summary, DemoSummary):
        return summary.mlflow_run_id or summary.stage1.mlflow_run_id
    return summary.mlflow_run_id


def build_sections(summary: Stage1Summary | DemoSummary) -> tuple[list[Section], dict[str, bytes]]:
    stage1 = summary.stage1 if isinstance(summary, DemoSummary) else summary
    rounds = sorted(stage1.rounds, key=lambda r: r.round)
    figs: dict[str, bytes] = {}
    no_rounds = Section("Stage 1 rounds", [("note", "Stage 1 rounds: not recorded.")])
    sections = [
        _rounds_section(rounds, figs) if rounds else no_rounds,
        _retrieval_section(rounds, figs),
        _judges_section(rounds, figs),
        _human_section(rounds),
    ]
    if isinstance(summary, DemoSummary):
        sections += [
            _stage2_section(summary.stage2, figs),
            _audit_section(summary.audit),
            _evaluation_section(summary.evaluation),
            _comparison_section(summary.comparison, figs),
        ]
    sections.append(_steps_section(summary, rounds))
    return sections, figs


def _header(summary: Stage1Summary | DemoSummary, source: str) -> tuple[str, list[str]]:
    demo = isinstance(summary, DemoSummary)
    stage1 = summary.stage1 if demo else summary
    facts = [f"source: {source}"] if source else []
    facts.append(f"rounds: {len(stage1.rounds)}")
    facts += [f"{k}: {v}" for k, v in (("MLflow run", run_id(summary)), ("D_gold", stage1.gold),
              ("D_silver", stage1.silver), ("best RM", stage1.best_rm)) if v]  # fmt: skip
    return ("synpref demo report" if demo else "synpref Stage 1 report"), facts


def render_report(summary: Stage1Summary | DemoSummary, source: str = "") -> Report:
    """The report of a summary: HTML (self-contained), Markdown (links ``report-<name>.png``)
    and the PNG figures by name."""
    sections, figs = build_sections(summary)
    title, facts = _header(summary, source)
    return Report(_html(title, facts, sections, figs), _markdown(title, facts, sections), figs)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#1d2330;line-height:1.45}
h1{border-bottom:2px solid #3b6ea5;padding-bottom:.3rem}h2{margin-top:2.2rem;color:#2b4f7a}
h3{margin-bottom:.4rem}ul.facts{color:#555;font-size:.92rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #ccd3dd;padding:.25rem .6rem}th{background:#eef2f7;text-align:left}
td{text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#f8fafc}img{max-width:100%;display:block;margin:.5rem 0}
p.note{color:#555;font-style:italic}
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>{{ css }}</style></head><body>
<h1>{{ title }}</h1>
<ul class="facts">{% for fact in facts %}<li>{{ fact }}</li>{% endfor %}</ul>
{% for section in sections %}<section><h2>{{ section.title }}</h2>
{% for kind, value in section.blocks %}{% if kind == "h3" %}<h3>{{ value }}</h3>
{% elif kind == "note" %}<p class="note">{{ value }}</p>
{% elif kind == "figure" %}<img alt="{{ value }}" src="data:image/png;base64,{{ images[value] }}">
{% else %}<table><thead><tr>{% for c in value.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in value.rows %}<tr>{% for cell in row %}<td{% if numeric(cell) %} class="num"\
{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% endif %}{% endfor %}</section>
{% endfor %}</body></html>
"""


def _html(title: str, facts: list[str], sections: list[Section], figs: dict[str, bytes]) -> str:
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(autoescape=True)
    images = {name: base64.b64encode(png).decode("ascii") for name, png in figs.items()}
    return env.from_string(_TEMPLATE).render(
        title=title,
        facts=facts,
        sections=sections,
        images=images,
        css=Markup(_CSS),
        numeric=_numeric,
    )


def _numeric(cell: str) -> bool:
    """Numbers (and their "–") align right."""
    return bool(re.fullmatch(r"[–\d,.%-]+", cell))


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _markdown(title: str, facts: list[str], sections: list[Section]) -> str:
    lines = [f"# {_md_cell(title)}", "", *(f"- {_md_cell(f)}" for f in facts)]
    for section in sections:
        lines += ["", f"## {_md_cell(section.title)}"]
        for kind, value in section.blocks:
            if kind == "h3":
                lines += ["", f"### {_md_cell(value)}"]
            elif kind == "note":
                lines += ["", f"*{_md_cell(value)}*"]
            elif kind == "figure":
                lines += ["", f"![{value}](report-{value}.png)"]
            else:
                align = [
                    all(_numeric(row[i]) for row in value.rows) for i in range(len(value.columns))
                ]
                lines += ["", "| " + " | ".join(map(_md_cell, value.columns)) + " |",
                          "|" + "".join("---:|" if a else "---|" for a in align)]  # fmt: skip
                lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in value.rows]
    return "\n".join(lines) + "\n"


def write_report(report: Report, out: str | Path) -> list[Path]:
    """``report.html``, ``report.md`` and ``report-<name>.png`` in ``out``; the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in report.figures.items():
        paths.append(out / f"report-{name}.png")
        paths[-1].write_bytes(png)
    (out / "report.md").write_text(report.markdown)
    (out / "report.html").write_text(report.html)
    return [out / "report.html", out / "report.md", *paths]


def log_report(paths: list[Path], mlflow_run_id: str, tracking_uri: str | None = None) -> None:
    """Attach the report files to an existing MLflow run, under ``report/``."""
    from mlflow.tracking import MlflowClient

    from synpref_core.config import TrackingConfig
    from synpref_core.tracking import resolve_uri

    client = MlflowClient(tracking_uri=resolve_uri(TrackingConfig(tracking_uri=tracking_uri)))
    client.get_run(mlflow_run_id)  # a missing run fails here, before any upload
    for path in paths:
        client.log_artifact(mlflow_run_id, str(path), artifact_path="report")
