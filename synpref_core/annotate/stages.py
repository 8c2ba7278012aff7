"""The annotation stages over manifests (DESIGN §2 step 3, §3 step 1): attribute drafting and
preference-aware judging, both map stages over a finished pairs stage (``PAIR_SCHEMA`` rows).

**AttributeStage** (``attributes``): for each pair missing any of the five attributes (or every
non-human one, with ``redraft``), one request at temperature 0 to the panel's drafting judge
with the versioned attribute template; the answer is validated (:func:`parse_attributes`) and,
when invalid, repaired once by asking again with the validation error. Drafted fields are
written with ``llm:<model>`` as their source; a value a human gave is never replaced. A pair
whose answer never validates, or whose request failed, is written unchanged and gets an error
row (``errors/``: the code, the reason, the last answer): rows in = rows out, and
``drafted + kept + errors = rows``.

**JudgeStage** (``judge``): for each candidate pair, the gold few-shot examples nearest to it in
the vector store (its pool vector, else its gold vector, else embedded now with the store's
encoder; none in the store: judged zero-shot and marked so), then ``samples`` requests per
judge model, each showing the sides in the seeded order of (seed, pair, sample) and carrying a
per-sample seed; every answer is parsed, mapped back through its permutation and kept as a
vote; the votes merge by the panel's rule (:mod:`synpref_core.annotate.ensemble`). One row per
candidate (``JUDGED_SCHEMA``): ``agree + disagree + undecided + error = candidates``, per shard
and per run.

Both hold the panel as their "model": its identity (judge models, local checkpoints'
fingerprints, sampling, template, seed, merge rule) and, for judging, the gold table's version
are part of the stage identity, so new judges or new gold re-judge instead of serving old
answers; URLs, keys, limits and the cache's place are not. The panel opens once per process
(the local judge server starts there when no endpoint is configured). Requests go through the
cached client, so a re-run or a resumed run never pays twice.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from synpref_core.annotate.client import ChatRequest, ChatResult, Usage, complete_all_sync
from synpref_core.annotate.ensemble import (
    JUDGEMENT_SCHEMA,
    OUTCOMES,
    Vote,
    judge_pairs,
    judgements_table,
    read_vote,
)
from synpref_core.annotate.panel import JudgePanel, OpenPanel, panel_identity, shared_panel
from synpref_core.annotate.parse import AttributeParseError, parse_attributes
from synpref_core.annotate.prompts import build_attribute_messages, build_judge_messages
from synpref_core.config import ActorConfig
from synpref_core.retrieval.retrieve import RetrievalConfig
from synpref_core.retrieval.store import StoreConfig
from synpref_core.schema import ATTRIBUTE, ATTRIBUTE_NAMES, PAIR_SCHEMA
from synpref_core.stages import MapStage, StageError

ERROR_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("judge", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),  # http_429, unparsable, malformed...
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw", pa.string()),  # the last answer, when there was one
    ]
)
JUDGED_SCHEMA = pa.schema(
    [
        *JUDGEMENT_SCHEMA,
        pa.field("few_shot_ids", pa.list_(pa.string()), nullable=False),  # nearest first
        pa.field("zero_shot", pa.bool_(), nullable=False),
        pa.field("template_version", pa.string(), nullable=False),
        pa.field("reason", pa.string()),  # why the outcome is "error"
    ]
)
REPAIR = (
    "That answer is not valid: {error}. Answer again with exactly one JSON object with the five "
    "keys and nothing else."
)
_RUNTIME = frozenset({"out", "actors", "num_gpus", "panel"})  # the panel counts as the model


def sample_seed(seed: int, pair_id: str, sample: int) -> int:
    """The sampling seed sent with one request: distinct per (pair, sample), stable per run."""
    digest = hashlib.sha256(f"{seed}\x1f{pair_id}\x1f{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class PanelStage(MapStage):
    """A map stage over a pairs stage that asks the judge panel (its "model": see the module
    docstring); a subclass's ``map_batch`` leaves its request counts in ``self.counts``."""

    holds_model = True
    runtime_fields = _RUNTIME

    def __init__(self, config: AttributeConfig | JudgeConfig):
        super().__init__(config, parent=config.pairs)
        self.parent.require_pairs(self.name)
        self.counts: dict[str, int] = {}

    def fingerprint_model(self) -> str:
        return panel_identity(self.settings.panel)

    def load_model(self) -> OpenPanel:
        return shared_panel(self.settings.panel)

    def batch_counts(self, batch: pa.RecordBatch, out: pa.Table) -> dict[str, int]:
        return self.counts


def usage_counts(usage: Usage) -> dict[str, int]:
    """Request accounting as stage counts (integers: cost in millionths of the currency)."""
    counts: dict[str, int] = defaultdict(int)
    for use in usage.endpoints.values():
        counts["requests"] += use.requests
        counts["requests_cached"] += use.cached
        counts["requests_sent"] += use.attempts
        counts["input_tokens"] += use.input_tokens
        counts["output_tokens"] += use.output_tokens
        counts["cost_micro"] += round(use.cost * 1e6)
    return dict(counts)


def add_counts(into: dict[str, int], more: dict[str, int]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0) + value


# -- attributes -------------------------------------------------------------------------------


class AttributeConfig(ActorConfig):
    """Draft the five attributes of every pair of ``pairs`` that lacks them."""

    pairs: str = Field(description="A finished pairs stage (its directory or manifest).")
    panel: JudgePanel = Field(JudgePanel(), description="Judges; the drafting one answers.")
    redraft: bool = Field(False, description="Draft every non-human value anew, not just gaps.")
    out: str = Field(description="Output stage directory.")
    batch_rows: int = Field(256, ge=1, description="Pairs drafted at a time.")


class AttributeStage(PanelStage):
    name = "attributes"
    output_schema = PAIR_SCHEMA
    error_schema = ERROR_SCHEMA

    def missing(self, row: dict[str, Any]) -> list[str]:
        """The attributes of ``row`` to draft: gaps, or every non-human value with redraft."""
        return [
            name
            for name in ATTRIBUTE_NAMES
            if not row[name]
            or not row[name]["value"]
            or (self.settings.redraft and row[name]["source"] != "human")
        ]

    def map_batch(self, batch: pa.RecordBatch, model: OpenPanel) -> tuple[pa.Table, pa.Table]:
        panel, judge = self.settings.panel, self.settings.panel.drafting_judge()
        endpoint = next(e for e in model.client.endpoints if e.name == judge)
        rows = pa.Table.from_batches([batch]).select([*ATTRIBUTE_NAMES, "pair_id"]).to_pylist()
        todo = {i: gaps for i, row in enumerate(rows) if (gaps := self.missing(row))}
        pairs = batch.select(["pair_id", "conversation", "chosen", "rejected"]).to_pylist()
        asked = {i: build_attribute_messages(pairs[i], panel.attribute_template) for i in todo}
        drafts, errors, usage = self._draft(model, judge, asked, pairs)
        source = f"llm:{endpoint.model}"
        for i, attributes in drafts.items():
            for name in todo[i]:
                rows[i][name] = {"value": getattr(attributes, name), "source": source}
        table = pa.Table.from_batches([batch])
        for name in ATTRIBUTE_NAMES:
            column = pa.array([row[name] for row in rows], ATTRIBUTE)
            table = table.set_column(table.schema.get_field_index(name), name, column)
        self.counts = {
            "drafted": len(drafts),
            "kept": len(rows) - len(todo),
            **usage_counts(usage),
        }
        return table, pa.Table.from_pylist(errors, schema=ERROR_SCHEMA)

    def _draft(
        self, model: OpenPanel, judge: str, asked: dict, pairs: list[dict]
    ) -> tuple[dict, list, Usage]:
        """Ask, validate, repair once: (drafts by row, error rows, usage)."""
        client = model.client
        template = self.settings.panel.attribute_template

        def request(messages: list[dict[str, str]], version: str, i: int) -> ChatRequest:
            seed = sample_seed(self.settings.panel.seed, pairs[i]["pair_id"], 0)
            return ChatRequest(
                endpoint=judge, messages=messages, temperature=0.0, template_version=version,
                max_tokens=self.settings.panel.max_tokens, seed=seed,
            )  # fmt: skip

        order = list(asked)
        first, usage = complete_all_sync(client, [request(asked[i][0], template, i) for i in order])
        drafts, errors, repair = {}, [], {}
        for i, result in zip(order, first, strict=True):
            outcome = _attributes_of(result)
            if isinstance(outcome, AttributeParseError):
                repair[i] = [
                    *asked[i][0],
                    {"role": "assistant", "content": result.text or ""},
                    {"role": "user", "content": REPAIR.format(error=outcome)},
                ]
            elif isinstance(outcome, ChatResult):
                errors.append(_error_row(pairs[i]["pair_id"], judge, outcome))
            else:
                drafts[i] = outcome
        if repair:
            again = [request(repair[i], f"{template}+repair", i) for i in repair]
            second, more = complete_all_sync(client, again)
            for i, result in zip(repair, second, strict=True):
                outcome = _attributes_of(result)
                if isinstance(outcome, AttributeParseError):
                    errors.append(
                        {"pair_id": pairs[i]["pair_id"], "judge": judge, "error": "unparsable",
                         "reason": f"after one repair: {outcome}"[:300], "raw": result.text},
                    )  # fmt: skip
                elif isinstance(outcome, ChatResult):
                    errors.append(_error_row(pairs[i]["pair_id"], judge, outcome))
                else:
                    drafts[i] = outcome
            _merge_usage(usage, more)
        return drafts, errors, usage


def _attributes_of(result: ChatResult) -> Any:
    """The validated attributes, the parse error, or the failed result itself."""
    if not result.ok:
        return result
    try:
        return parse_attributes(result.text or "")
    except AttributeParseError as exc:
        return exc


def _error_row(pair_id: str, judge: str, result: ChatResult) -> dict[str, Any]:
    reason = result.reason or result.error or "unknown"
    return {
        "pair_id": pair_id,
        "judge": judge,
        "error": result.error,
        "reason": reason,
        "raw": None,
    }


def _merge_usage(usage: Usage, more: Usage) -> None:
    for name, use in more.endpoints.items():
        into = usage.endpoints.setdefault(name, type(use)())
        for key in ("requests", "cached", "attempts", "input_tokens", "output_tokens", "cost"):
            setattr(into, key, getattr(into, key) + getattr(use, key))
        into.errors.update(use.errors)


# -- judging ----------------------------------------------------------------------------------


class JudgeConfig(ActorConfig):
    """Judge every pair of ``pairs`` with the panel, guided by gold few-shot examples."""

    pairs: str = Field(description="Candidate pairs: a finished pairs stage (with attributes).")
    panel: JudgePanel = Field(JudgePanel(), description="Judges, samples, merge rule.")
    store: StoreConfig | None = Field(
        StoreConfig(),
        description="Vector store whose gold table gives few-shot examples; None: zero-shot.",
    )
    few_shot: RetrievalConfig = Field(
        RetrievalConfig(), description="few_shot = m ≤ 8 gold examples per candidate."
    )
    embed_model: str = Field(
        "minilm", description="Encoder for candidates not in the store (must match its vectors)."
    )
    embed_max_chars: int = Field(4000, ge=64, description="The store's embed max_chars.")
    out: str = Field(description="Output stage directory.")
    batch_rows: int = Field(256, ge=1, description="Candidates judged at a time.")


class JudgeStage(PanelStage):
    name = "judge"
    output_schema = JUDGED_SCHEMA

    def __init__(self, config: JudgeConfig):
        self.gold_version = _gold_version(config.store)
        super().__init__(config)

    def fingerprint_model(self) -> str:
        return f"{super().fingerprint_model()}:gold-{self.gold_version}"

    def map_batch(self, batch: pa.RecordBatch, model: OpenPanel) -> pa.Table:
        from synpref_core.annotate.fewshot import few_shot_by_candidate

        panel = self.settings.panel
        pairs = batch.to_pylist()
        shots = few_shot_by_candidate(self.settings, pairs) if self.gold_version else {}
        requests, prompts = [], []
        for pair in pairs:
            examples = shots.get(pair["pair_id"], [])
            for endpoint in model.client.endpoints:
                for sample in range(panel.samples):
                    prompt = build_judge_messages(
                        pair, examples, panel.seed, sample, panel.judge_template
                    )
                    prompts.append((pair["pair_id"], endpoint.name, sample, prompt))
                    requests.append(
                        ChatRequest(
                            endpoint=endpoint.name, messages=prompt.messages,
                            temperature=panel.temperature, max_tokens=panel.max_tokens,
                            template_version=prompt.template_version, sample=sample,
                            seed=sample_seed(panel.seed, pair["pair_id"], sample),
                        )
                    )  # fmt: skip
        results, usage = complete_all_sync(model.client, requests) if requests else ([], Usage())
        votes = [_vote(p, r) for p, r in zip(prompts, results, strict=True)]
        judges = [e.name for e in model.client.endpoints]
        judgements = judgements_table(judge_pairs(votes, judges, panel.ensemble))
        table = self._with_context(judgements, pairs, shots, votes)
        self.counts = {
            **{o: pc.sum(pc.equal(table["outcome"], o)).as_py() or 0 for o in OUTCOMES},
            "zero_shot": int(np.sum(table["zero_shot"].to_numpy(zero_copy_only=False))),
            **usage_counts(usage),
        }  # fmt: skip
        return table

    def _with_context(self, judgements, pairs, shots, votes) -> pa.Table:
        errors = {v.pair_id: v.error for v in votes if v.error is not None}
        ids = judgements["pair_id"].to_pylist()
        few = [[g["pair_id"] for g in shots.get(pid, [])] for pid in ids]
        columns = {
            "few_shot_ids": pa.array(few, pa.list_(pa.string())),
            "zero_shot": pa.array([not f for f in few], pa.bool_()),
            "template_version": pa.array([self.settings.panel.judge_template] * len(ids)),
            "reason": pa.array([errors.get(pid) for pid in ids], pa.string()),
        }
        for name, column in columns.items():
            judgements = judgements.append_column(name, column)
        if len(ids) != len(pairs):
            raise StageError(f"{self.name}: {len(pairs)} candidates, {len(ids)} judgements")
        return judgements


def _vote(prompt: tuple, result: ChatResult) -> Vote:
    pair_id, judge, sample, judge_prompt = prompt
    if not result.ok:
        return Vote(
            pair_id, judge, sample, judge_prompt.permutation, judge_prompt.template_version,
            "", None, None, f"{result.error}: {result.reason}",
        )  # fmt: skip
    return read_vote(pair_id, judge, sample, judge_prompt, result.text or "")


def _gold_version(store: StoreConfig | None) -> int:
    """The gold table's version (0: no store or no gold table: every candidate is zero-shot)."""
    if store is None:
        return 0
    from synpref_core.retrieval.store import VectorStore

    with VectorStore(store, read_only=True) as vectors:
        if not vectors.exists("gold") or not vectors.count("gold"):
            return 0
        return vectors.version("gold") or 0
