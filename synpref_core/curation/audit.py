"""Stage 2's noise-injection audit: flip a seeded share of a human-labelled D_wild, run Stage 2,
and measure how much of the injected noise the consistency filter removes or repairs.

:class:`InjectNoiseStage` swaps chosen and rejected of each pair whose seeded hash of
``pair_id`` falls below ``fraction`` (so the choice is the same on every machine and for every
shard layout; the number injected is binomial around ``fraction``, reported in the counts). An
injected pair gets the id of its new content, ``parent_id`` = its clean id, its human votes
swapped to the new stored order, and ``meta.injected = true``. Scorers and judges never see the
flag: they read the conversation and the two responses only (``annotate/prompts.py``). The noisy
stage becomes D_wild; Stage 2 runs on it unchanged.

:func:`audit_outcomes` joins Stage 2's curated rows back to the noisy pairs (a flipped row through
``parent_id``). The right label of every pair is its label before injection (the human one), so
a clean pair's stored order is right and an injected pair's is wrong. With the outcome of each:

- ``kept_correct``: share of kept pairs whose stored order is the human one (clean ones);
- ``flipped_correct``: share of flipped pairs whose flip restores the human order (injected ones);
- ``curated_correct``: share of kept + flipped pairs that leave Stage 2 with the human order;
- ``injected_caught``: share of injected pairs flipped back or discarded;
- ``clean_lost``: share of clean pairs that do not leave with their human label: discarded, or
  flipped (now wrong).

Beside each share, ``blind``: what a filter blind to content would score with the same kept /
flipped / discarded rates (e.g. ``kept_correct`` = the clean share of the input), the floor a
filter with any signal beats.

Each share comes with a 95% percentile bootstrap interval: the wild pairs resampled with
replacement (a multinomial draw over the six injected/clean × kept/flipped/discarded cells),
seeded, :data:`RESAMPLES` times. The paper's human audit of its own Stage 2 output (kept 86%,
flipped 92% agree with humans, DESIGN §3) measures the same two shares against fresh human
labels of a 40M-pair run; the figures here are against the source's human labels, with injected
rather than natural noise, so they are comparable in kind, not one to one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from synpref_core.config import StrictModel
from synpref_core.schema import EVIDENCE, PAIR_SCHEMA, pair_id
from synpref_core.stages import MapStage, StageError

RESAMPLES = 1000
OUTCOMES = ("kept", "flipped", "discarded")
# metric → (numerator cells, denominator cells); a cell is (injected, outcome)
METRICS: dict[str, tuple[set[tuple[bool, str]], set[tuple[bool, str]]]] = {
    "kept_correct": ({(False, "kept")}, {(False, "kept"), (True, "kept")}),
    "flipped_correct": ({(True, "flipped")}, {(False, "flipped"), (True, "flipped")}),
    "curated_correct": (
        {(False, "kept"), (True, "flipped")},
        {(i, o) for i in (False, True) for o in ("kept", "flipped")},
    ),
    "injected_caught": ({(True, "flipped"), (True, "discarded")}, {(True, o) for o in OUTCOMES}),
    "clean_lost": ({(False, "flipped"), (False, "discarded")}, {(False, o) for o in OUTCOMES}),
}
PAPER = {"kept_correct": 0.86, "flipped_correct": 0.92}  # DESIGN §3: human audit, 40M pairs
_CELLS = [(i, o) for i in (False, True) for o in OUTCOMES]


class InjectNoiseConfig(StrictModel):
    """Which share of ``pairs`` to flip, and the salt of the choice."""

    pairs: str = Field(description="A finished pairs stage with human labels (D_wild).")
    fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Expected share of pairs flipped.")
    seed: int = Field(0, ge=0, description="Salt of the hash that picks the pairs.")
    out: str = Field(description="Output stage directory.")
    batch_rows: int = Field(10_000, ge=1)


def noise_position(pair_ids: list[str], seed: int) -> np.ndarray:
    """Each pair's place in [0, 1) for injection: a seeded BLAKE2b of its id, personalised so it
    is independent of :func:`~synpref_core.curation.select.split_position` with the same seed
    (an audit on a hash split must not flip one side of the split more than the other)."""
    salt, person = str(seed).encode(), b"inject-noise"
    values = [
        int.from_bytes(
            hashlib.blake2b(i.encode(), digest_size=4, salt=salt, person=person).digest()
        )
        for i in pair_ids
    ]
    return np.array(values, dtype=np.float64) / (1 << 32)


class InjectNoiseStage(MapStage):
    """D_wild with a seeded share of its pairs flipped and marked (module docstring)."""

    name = "inject_noise"
    output_schema = PAIR_SCHEMA
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"out", "batch_rows"})

    def __init__(self, config: InjectNoiseConfig):
        super().__init__(config, parent=config.pairs)

    def map_batch(self, batch: pa.RecordBatch, model: None) -> pa.Table:
        table = pa.Table.from_batches([batch])
        ids = table["pair_id"].to_pylist()
        flip = noise_position(ids, self.settings.seed) < self.settings.fraction
        return inject_noise(table, flip)

    def batch_counts(self, batch: pa.RecordBatch, out: pa.Table) -> dict[str, int]:
        injected = int(pc.sum(pc.not_equal(out["pair_id"], batch.column("pair_id"))).as_py() or 0)
        return {"injected": injected, "clean": batch.num_rows - injected}


def inject_noise(table: pa.Table, flip: np.ndarray) -> pa.Table:
    """``table`` with the rows where ``flip`` is true swapped, re-identified, linked and marked."""
    mask = pa.array(flip)
    chosen = pc.if_else(mask, table["rejected"], table["chosen"])
    rejected = pc.if_else(mask, table["chosen"], table["rejected"])
    ids, parents = table["pair_id"].to_pylist(), table["parent_id"].to_pylist()
    metas, evidence = table["meta"].to_pylist(), table["evidence"].to_pylist()
    conversations = table["conversation"].filter(mask).to_pylist()
    for i, conversation in zip(np.flatnonzero(flip), conversations, strict=True):
        clean = ids[i]
        ids[i] = pair_id(conversation, chosen[int(i)].as_py(), rejected[int(i)].as_py())
        parents[i] = clean
        metas[i] = json.dumps({**json.loads(metas[i] or "{}"), "injected": True}, sort_keys=True)
        evidence[i] = _swap_votes(evidence[i])
    columns = {
        "pair_id": pa.array(ids, pa.string()),
        "chosen": chosen,
        "rejected": rejected,
        "evidence": pa.array(evidence, EVIDENCE),
        "parent_id": pa.array(parents, pa.string()),
        "meta": pa.array(metas, pa.string()),
    }
    for name, column in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def _swap_votes(evidence: dict[str, Any] | None) -> dict[str, Any] | None:
    """Human votes in the swapped pair's stored order (1 ↔ 0; -1, a tie, stays)."""
    if not evidence or not evidence.get("human_votes"):
        return evidence
    return {**evidence, "human_votes": [1 - v if v >= 0 else v for v in evidence["human_votes"]]}


def is_injected(metas: list[str | None]) -> np.ndarray:
    """Which noisy pairs were flipped by the injection (their ``meta.injected``)."""
    return np.array([bool(m) and json.loads(m).get("injected") is True for m in metas], dtype=bool)


def audit_outcomes(noisy: pa.Table, curated: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(injected, outcome) of every noisy pair, in ``noisy``'s order. ``noisy`` has pair_id and
    meta, ``curated`` pair_id, parent_id and status; every noisy pair must appear exactly once."""
    ids = noisy["pair_id"].to_pylist()
    if len(set(ids)) != len(ids):
        raise StageError(f"{len(ids) - len(set(ids))} noisy pairs share an id: cannot audit")
    status = curated["status"].to_pylist()
    origin = [
        parent if s == "flipped" else pid
        for pid, parent, s in zip(
            curated["pair_id"].to_pylist(), curated["parent_id"].to_pylist(), status, strict=True
        )
    ]
    outcome = dict(zip(origin, status, strict=True))
    if len(outcome) != len(origin) or set(outcome) != set(ids):
        raise StageError(
            f"the curated rows ({len(origin)}) do not account for the {len(ids)} noisy pairs "
            "one to one: audit Stage 2's output of this very noisy stage"
        )
    if unknown := set(status) - set(OUTCOMES):
        raise StageError(f"curated rows with statuses {sorted(unknown)}: not a Stage 2 output")
    return is_injected(noisy["meta"].to_pylist()), np.array([outcome[i] for i in ids], dtype=object)


def cell_counts(injected: np.ndarray, outcome: np.ndarray) -> np.ndarray:
    """Counts of the six (injected, outcome) cells, in :data:`_CELLS` order."""
    return np.array([int(((injected == i) & (outcome == o)).sum()) for i, o in _CELLS])


def shares(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric from cell counts (last axis: the six cells); NaN where nothing to share."""
    out = {}
    for name, (hits, total) in METRICS.items():
        num = counts[..., [c in hits for c in _CELLS]].sum(axis=-1)
        den = counts[..., [c in total for c in _CELLS]].sum(axis=-1)
        out[name] = np.where(den > 0, num / np.maximum(den, 1), np.nan)
    return out


def audit_metrics(
    injected: np.ndarray, outcome: np.ndarray, seed: int = 0, resamples: int = RESAMPLES
) -> dict[str, dict[str, Any]]:
    """metric → {share, ci_low, ci_high, pairs (the denominator), blind}; None where empty.
    ``blind`` is the share a content-blind filter would get: the same kept / flipped /
    discarded rates, drawn independently of which pairs were injected."""
    counts = cell_counts(injected, outcome)
    n = max(int(counts.sum()), 1)
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)
    grid = counts.reshape(2, len(OUTCOMES))  # rows: clean, injected (the _CELLS order)
    point, boot = shares(counts), shares(draws)
    blind = shares(np.outer(grid.sum(axis=1), grid.sum(axis=0)).ravel() / n)
    result = {}
    for name, (_, total) in METRICS.items():
        den = int(counts[[c in total for c in _CELLS]].sum())
        low, high = np.nanpercentile(boot[name], [2.5, 97.5]) if den else (np.nan, np.nan)
        result[name] = {
            "share": None if den == 0 else float(point[name]),
            "ci_low": None if den == 0 else float(low),
            "ci_high": None if den == 0 else float(high),
            "pairs": den,
            "blind": None if den == 0 else float(blind[name]),
        }
    return result


class AuditResult(StrictModel):
    """Metrics with their intervals and the six cell counts (``injected.kept``, ...)."""

    metrics: dict[str, dict[str, Any]]
    counts: dict[str, int]

    def flat(self, prefix: str = "audit.") -> dict[str, float]:
        """Flat numbers for MLflow: each share, its interval, and the cell counts."""
        out = {f"{prefix}{k}": float(v) for k, v in self.counts.items()}
        for name, m in self.metrics.items():
            for key, suffix in (("share", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high"),
                                ("blind", "_blind")):  # fmt: skip
                if m[key] is not None:
                    out[f"{prefix}{name}{suffix}"] = m[key]
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One row per metric, with the paper's human-audit figure where it has one."""
        return [
            {"metric": name, **m, "paper_human_audit": PAPER.get(name)}
            for name, m in self.metrics.items()
        ]


def audit_table(noisy: pa.Table, curated: pa.Table, seed: int = 0) -> AuditResult:
    """The audit of one Stage 2 run over a noisy D_wild (module docstring)."""
    injected, outcome = audit_outcomes(noisy, curated)
    counts = dict(zip([f"{'injected' if i else 'clean'}.{o}" for i, o in _CELLS],
                      cell_counts(injected, outcome).tolist(), strict=True))  # fmt: skip
    return AuditResult(metrics=audit_metrics(injected, outcome, seed), counts=counts)
