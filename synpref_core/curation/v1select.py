"""Skywork-Reward v1's selection steps (DESIGN §6): map stages over a pairs stage and a score
stage of the same pairs (:class:`~synpref_core.rm.scoring.ScoreStage` output), writing the pairs
they keep unchanged (``PAIR_SCHEMA``).

**TopFractionStage** (``top_fraction``) ranks the pairs of each task category by an RM score, the
mean of both responses' rewards plus a per-source offset, and keeps the top fraction of each
category (v1, on Magpie: 30% of math and of coding, 10% of the rest)::

    TopFractionConfig(pairs=".../pool", scores=".../pool-scores", out=".../top",
                      sources=["magpie-ultra", "magpie-pro"], offsets={"magpie-pro": -0.2})

The ranking is global, across shards: :meth:`TopFractionStage.plan` reads every ranked pair's id,
category, source and rewards (only those columns; about 100 bytes a pair are held at once in the
planning process, so ~1 GB for 10M pairs; a re-run reads them again, then skips finished shards)
and finds each category's threshold: its k-th pair in the order (score descending, pair_id
ascending), with k = fraction × the category's pairs, rounded half up. The thresholds are part of
every shard's spec (so of every marker and of the manifest); a shard keeps the pairs at or before
their category's threshold in that order: exactly k per category, ties broken by pair_id. A pair
with no ``task_category`` value, or a value outside the 12 categories, ranks in the ``unknown``
bucket (default ``"other"``).

**RmAgreesStage** (``rm_agrees``) keeps a pair when the RM already ranks chosen above rejected:
p = σ(r_chosen − r_rejected) > 0.5 + ``margin`` (v1 kept WildGuardMix pairs so, scored by an RM
trained on its other sources).

Both take ``sources``: the step applies to pairs of those sources only, the others pass through
(counted ``passed_through``); None applies it to every pair. The score stage must be the score
stage of these very pairs, file for file and row for row; another layout, or a pair_id out of
place, fails with one line. Every input row is accounted for: ``rows + not_selected =
input_rows`` per shard and per run; the top fraction adds ``<category>:kept`` and
``<category>:not_selected`` over its ranked pairs.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, ValidationInfo, field_validator

from synpref_core.config import StrictModel
from synpref_core.io import fs as fsio
from synpref_core.schema import PAIR_SCHEMA, TASK_CATEGORIES
from synpref_core.stages import (
    Manifest,
    MapStage,
    ShardResult,
    StageError,
    load_manifest,
    stage_identity,
)

SCORE_COLUMNS = ["pair_id", "r_chosen", "r_rejected", "p"]  # of SCORE_SCHEMA, what is read
RANK_COLUMNS = ["pair_id", "task_category", "source"]  # of the pairs, what ranking reads
Fraction = Annotated[float, Field(gt=0, le=1)]
Offset = Annotated[float, Field(allow_inf_nan=False)]


class SelectionRule(StrictModel):
    """What a selection step applies to (the rule's own fields are in its subclasses)."""

    sources: list[str] | None = Field(
        None, description="Apply the step to these sources only; others pass. None: every pair."
    )


class ScoredPairsInputs(StrictModel):
    """A pairs stage, its score stage and where the selection goes."""

    pairs: str = Field(description="A finished pairs stage (its directory or manifest).")
    scores: str = Field(description="The score stage of those very pairs (ScoreStage output).")
    out: str = Field(description="Output stage directory.")
    batch_rows: int = Field(10_000, ge=1, description="Pairs read and selected at a time.")


class ScoredPairsConfig(ScoredPairsInputs, SelectionRule):
    """A selection step over a pairs stage and its scores."""


class TopFractionRule(SelectionRule):
    """Keep the top fraction of each task category by mean reward (+ per-source offset)."""

    default_fraction: float = Field(
        0.1, gt=0, le=1, description="Fraction kept of a category that `fractions` does not name."
    )
    unknown: str = Field(
        "other",
        min_length=1,
        description="Bucket of pairs with no task category or one outside the 12.",
    )
    fractions: dict[str, Fraction] = Field(
        {"math": 0.3, "coding & debugging": 0.3},
        description="Fraction kept per task category (or the unknown bucket), in (0, 1].",
    )
    offsets: dict[str, Offset] = Field(
        {}, description="Added to the score of every pair of a source (source name: offset)."
    )

    @field_validator("fractions")
    @classmethod
    def _known_categories(cls, fractions: dict[str, float], info: ValidationInfo) -> dict:
        allowed = {*TASK_CATEGORIES, info.data.get("unknown", "other")}
        strange = sorted(set(fractions) - allowed)
        if strange:
            raise ValueError(f"{strange} are neither task categories nor the unknown bucket")
        return fractions

    def fraction(self, category: str) -> float:
        return self.fractions.get(category, self.default_fraction)


class TopFractionConfig(ScoredPairsInputs, TopFractionRule):
    """:class:`TopFractionRule` over a pairs stage and its scores."""


class RmAgreesRule(SelectionRule):
    """Keep the pairs whose RM preference p exceeds 0.5 + margin."""

    margin: float = Field(
        0.0, ge=0, lt=0.5, description="Keep pairs with p > 0.5 + margin (DESIGN §3's δ)."
    )


class RmAgreesConfig(ScoredPairsInputs, RmAgreesRule):
    """:class:`RmAgreesRule` over a pairs stage and its scores."""


def read_columns(uri: str, columns: list[str]) -> pa.Table:
    fs, path = fsio.resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.read_table(f, columns=columns)


def check_layout(pairs: Manifest, scores: Manifest) -> None:
    """Fail unless ``scores`` holds one file per pairs file with as many rows and the score
    columns (its pair ids are checked as they are read)."""
    pairs.require_pairs()
    got, want = [f["rows"] for f in scores.entries()], [f["rows"] for f in pairs.entries()]
    if len(got) != len(want):
        detail = f"{len(got)} files against {len(want)}"
    else:
        i = next((i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b), None)
        detail = None if i is None else f"file {i} holds {got[i]} rows against {want[i]}"
    if detail:
        raise StageError(f"{scores.uri} is not a score stage of {pairs.uri}: {detail}")
    if got:
        require_score_columns(scores)


def require_score_columns(scores: Manifest) -> None:
    fs, path = fsio.resolve(scores.paths()[0])
    names = pq.read_schema(path, filesystem=fs).names
    if missing := [c for c in SCORE_COLUMNS if c not in names]:
        raise StageError(f"{scores.uri}: not a score stage (no {', '.join(missing)} column)")


def match_ids(pair_ids: pa.Array, scored: pa.Array, pairs_uri: str, scores_uri: str) -> None:
    """Fail unless the score rows are those of the pairs, in order."""
    n = min(len(pair_ids), len(scored))
    same = np.asarray(pc.equal(pair_ids.slice(0, n), scored.slice(0, n)))
    if len(pair_ids) == len(scored) and same.all():
        return
    at = n if same.all() else int(np.argmin(same))
    found = scored[at].as_py() if at < len(scored) else "missing"
    wanted = pair_ids[at].as_py() if at < len(pair_ids) else "missing"
    raise StageError(
        f"{scores_uri} does not score {pairs_uri}: at row {at} it holds pair {found}, not {wanted}"
    )


class ScoredPairsStage(MapStage):
    """A map stage over ``pairs`` whose every batch comes with its score rows: the rows of the
    score file of the same index, at the same place. A shard holds its score file's four
    columns in memory (~60 bytes a pair); a process runs one shard at a time."""

    output_schema = PAIR_SCHEMA
    runtime_fields = frozenset({"out", "batch_rows"})

    def __init__(self, config: ScoredPairsConfig):
        self.scores = load_manifest(config.scores)
        super().__init__(config, parent=config.pairs)
        self.parents.append(self.scores.uri)
        check_layout(self.parent, self.scores)
        self.shard: dict[str, Any] = {}
        self._unmatched: pa.Table | None = None  # the shard's score rows not yet read

    def identity(self) -> str:
        parents = [self.parent, self.scores]
        return stage_identity(self.name, self.settings, self.runtime_fields, parents)

    @abstractmethod
    def keep(self, pairs: pa.Table, scores: pa.Table) -> np.ndarray:
        """Which of the pairs the step keeps (boolean), given their score rows."""

    def plan(self) -> list[dict[str, Any]]:
        entries = self.scores.entries()
        return [
            {**spec, "scores": s["path"]} for spec, s in zip(super().plan(), entries, strict=True)
        ]

    def run_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        self.shard = spec
        self._unmatched = read_columns(fsio.join(self.scores.dir, spec["scores"]), SCORE_COLUMNS)
        try:
            return super().run_shard(index, spec)
        finally:
            self.shard, self._unmatched = {}, None

    def take_scores(self, batch: pa.RecordBatch) -> pa.Table:
        """The score rows of ``batch``, checked by pair_id."""
        rows = self._unmatched.slice(0, batch.num_rows)
        self._unmatched = self._unmatched.slice(batch.num_rows)
        pairs_uri = fsio.join(self.parent.dir, self.shard["input"])
        scores_uri = fsio.join(self.scores.dir, self.shard["scores"])
        match_ids(batch.column("pair_id"), rows["pair_id"].combine_chunks(), pairs_uri, scores_uri)
        return rows

    def applies(self, pairs: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Which pairs the step applies to (the others pass through)."""
        if self.settings.sources is None:
            return np.ones(pairs.num_rows, dtype=bool)
        chosen = pc.is_in(pairs.column("source"), pa.array(self.settings.sources, pa.string()))
        return np.asarray(chosen)

    def map_batch(self, batch: pa.RecordBatch, model: None) -> pa.Table:
        table = pa.Table.from_batches([batch])
        keep = self.keep(table, self.take_scores(batch)) | ~self.applies(table)
        return table.filter(pa.array(keep))

    def batch_counts(self, batch: pa.RecordBatch, out: pa.Table) -> dict[str, int]:
        return {
            "input_rows": batch.num_rows,
            "not_selected": batch.num_rows - out.num_rows,
            "passed_through": int((~self.applies(batch)).sum()),
        }


class RmAgreesStage(ScoredPairsStage):
    """Keep-if-RM-agrees: p > 0.5 + margin (module docstring)."""

    name = "rm_agrees"

    def keep(self, pairs: pa.Table, scores: pa.Table) -> np.ndarray:
        return np.asarray(pc.greater(scores["p"], 0.5 + self.settings.margin))


def category_of(task_category: pa.Array | pa.ChunkedArray, unknown: str) -> pa.Array:
    """Each pair's ranking bucket: its task category, else ``unknown``."""
    value = pc.struct_field(task_category, "value")
    known = pc.is_in(value, pa.array(TASK_CATEGORIES))  # false for a missing value
    return pc.if_else(known, value, unknown)


def rank_score(scores: pa.Table, source: pa.Array, offsets: dict[str, float]) -> np.ndarray:
    """Mean reward of both responses plus the offset of the pair's source (float64)."""
    # + 0.0 turns -0.0 into 0.0, so the planning sort and the shards' == agree on ties
    score = (scores["r_chosen"].to_numpy() + scores["r_rejected"].to_numpy()) / 2 + 0.0
    for name, offset in offsets.items():  # a loop over the configured sources, not rows
        score = np.where(np.asarray(pc.equal(source, name)), score + offset, score)
    return score


class TopFractionStage(ScoredPairsStage):
    """Per-category top fraction by mean reward, ranked across all shards (module docstring)."""

    name = "top_fraction"

    def plan(self) -> list[dict[str, Any]]:
        thresholds = self.thresholds()
        return [{**spec, "thresholds": thresholds} for spec in super().plan()]

    def ranking_keys(self) -> pa.Table | None:
        """pair_id, category and score of every ranked pair of every shard (None: no pairs)."""
        parts = []
        for pairs_uri, scores_uri in zip(self.parent.paths(), self.scores.paths(), strict=True):
            pairs = read_columns(pairs_uri, RANK_COLUMNS)
            scores = read_columns(scores_uri, SCORE_COLUMNS[:3])
            ids = pairs["pair_id"].combine_chunks()
            match_ids(ids, scores["pair_id"].combine_chunks(), pairs_uri, scores_uri)
            score = rank_score(scores, pairs["source"], self.settings.offsets)
            if np.isnan(score).any():
                raise StageError(f"{scores_uri}: NaN rewards cannot be ranked")
            category = category_of(pairs["task_category"], self.settings.unknown)
            keys = pa.table({"pair_id": pairs["pair_id"], "category": category, "score": score})
            parts.append(keys.filter(pa.array(self.applies(pairs))))
        return pa.concat_tables(parts) if parts else None

    def thresholds(self) -> dict[str, dict[str, Any]]:
        """Per category: its ranked pairs, how many to keep, and the last kept (score, pair_id)."""
        keys = self.ranking_keys()
        if keys is None:
            return {}
        order = [("category", "ascending"), ("score", "descending"), ("pair_id", "ascending")]
        ranked = keys.take(pc.sort_indices(keys, sort_keys=order))
        found, start = {}, 0
        for group in pc.value_counts(ranked["category"]).to_pylist():  # categories in sort order
            name, rows = group["values"], group["counts"]
            k = int(np.floor(self.settings.fraction(name) * rows + 0.5))
            found[name] = {"rows": rows, "keep": k}
            if k:
                last = start + k - 1
                found[name] |= {
                    "score": ranked["score"][last].as_py(),
                    "pair_id": ranked["pair_id"][last].as_py(),
                }
            start += rows
        return found

    def keep(self, pairs: pa.Table, scores: pa.Table) -> np.ndarray:
        category = category_of(pairs["task_category"], self.settings.unknown)
        score = rank_score(scores, pairs["source"], self.settings.offsets)
        kept = np.zeros(pairs.num_rows, dtype=bool)
        for name, last in self.shard["thresholds"].items():  # a loop over categories, not rows
            if last["keep"]:
                tie_won = np.asarray(pc.less_equal(pairs["pair_id"], last["pair_id"]))
                ahead = (score > last["score"]) | ((score == last["score"]) & tie_won)
                kept |= np.asarray(pc.equal(category, name)) & ahead
        return kept

    def batch_counts(self, batch: pa.RecordBatch, out: pa.Table) -> dict[str, int]:
        counts = super().batch_counts(batch, out)
        ranked_in = category_counts(batch, self.applies(batch), self.settings.unknown)
        kept = category_counts(out, self.applies(out), self.settings.unknown)
        for name, rows in ranked_in.items():
            counts[f"{name}:kept"] = kept.get(name, 0)
            counts[f"{name}:not_selected"] = rows - kept.get(name, 0)
        return counts


def category_counts(pairs: pa.Table | pa.RecordBatch, ranked: np.ndarray, unknown: str) -> dict:
    """Ranked pairs per category bucket."""
    category = category_of(pairs.column("task_category"), unknown).filter(pa.array(ranked))
    return {g["values"]: g["counts"] for g in pc.value_counts(category).to_pylist()}
