"""Arrow schemas of synpref's data, as code (DESIGN §1).

A preference pair is (x, y_w, y_l): ``conversation`` is x (the messages up to the last user turn),
``chosen`` and ``rejected`` are the final assistant turns. Every write goes through
:func:`conform`, so a table that does not match the schema never reaches disk.

The content-derived ``pair_id`` hashes (conversation, chosen, rejected) and nothing else, so the
same pair gets the same id across re-runs, sources and machines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import orjson
import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

# Who produced a value or took a decision. ``source`` means "as the input dataset had it".
Producer = Literal["human", "llm", "rm", "source"]
PRODUCERS: tuple[str, ...] = ("human", "llm", "rm", "source")

Status = Literal["unverified", "gold", "silver", "kept", "flipped", "discarded", "quarantined"]
STATUSES: tuple[str, ...] = (
    "unverified",
    "gold",
    "silver",
    "kept",
    "flipped",
    "discarded",
    "quarantined",
)

ATTRIBUTE = pa.struct([("value", pa.string()), ("source", pa.string())])
ATTRIBUTE_NAMES: tuple[str, ...] = (
    "task_category",
    "objectivity",
    "controversiality",
    "desired_attributes",
    "annotation_guideline",
)
TASK_CATEGORIES: tuple[str, ...] = (
    "information seeking",
    "coding & debugging",
    "advice seeking",
    "math",
    "creative writing",
    "reasoning",
    "planning",
    "data analysis",
    "editing",
    "role playing",
    "brainstorming",
    "other",
)

# Evidence behind a decision. Votes use 1 = "chosen is better", 0 = "rejected is better",
# -1 = tie / undecided, always in the pair's *stored* order.
JUDGE_VOTE = pa.struct([("judge", pa.string()), ("vote", pa.int8())])
EVIDENCE = pa.struct(
    [
        ("human_votes", pa.list_(pa.int8())),
        ("judge_votes", pa.list_(JUDGE_VOTE)),
        ("p_best", pa.float64()),
        ("p_gold", pa.float64()),
        ("note", pa.string()),
    ]
)

PAIR_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("conversation", pa.list_(MESSAGE), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        *(pa.field(name, ATTRIBUTE) for name in ATTRIBUTE_NAMES),
        pa.field("status", pa.string(), nullable=False),
        pa.field("decided_by", pa.string(), nullable=False),
        pa.field("evidence", EVIDENCE),
        pa.field("round", pa.int32()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("source_subset", pa.string()),
        pa.field("parent_id", pa.string()),
        # Rows that belong together in evaluation (RM-Bench's 3x3 grid, RMB best-of-N).
        pa.field("group_id", pa.string()),
        # Format-specific extras as a JSON object (e.g. RM-Bench style indices).
        pa.field("meta", pa.string()),
    ]
)

# Everything that did not become a pair, with the reason. ``reason_code`` is one of
# REJECT_CODES; ``raw`` keeps the input (truncated) so nothing is lost without a trace.
REJECT_SCHEMA = pa.schema(
    [
        pa.field("reason_code", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("pair_id", pa.string()),
        pa.field("duplicate_of", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

# Outcome of every input row of ingestion: exactly one of these.
OUTCOME_KEPT = "kept"
QUARANTINE_CODES: tuple[str, ...] = (
    "missing_field",
    "empty_prompt",
    "empty_side",
    "identical_sides",
    "wrong_type",
    "undecodable_text",
    "oversize_field",
    "history_mismatch",
    "no_preference",
)
REJECT_CODES: tuple[str, ...] = (*QUARANTINE_CODES, "duplicate", "contaminated")


class SchemaError(ValueError):
    """A table does not match the schema it is written under."""


def fingerprint(schema: pa.Schema) -> str:
    """A short stable hash of a schema's fields and types (metadata ignored)."""
    text = ",".join(f"{f.name}:{f.type}:{f.nullable}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``table`` in ``schema``'s column order, or raise naming what differs.

    Types must already match exactly: a silent cast could hide a bug upstream.
    """
    missing = [n for n in schema.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in schema.names]
    if missing or extra:
        raise SchemaError(f"columns differ from schema: missing={missing} extra={extra}")
    table = table.select(schema.names)
    for field in schema:
        actual = table.schema.field(field.name).type
        if actual != field.type:
            raise SchemaError(f"column {field.name!r} has type {actual}, schema wants {field.type}")
        if not field.nullable and table.column(field.name).null_count:
            raise SchemaError(f"column {field.name!r} is not nullable but has nulls")
    return table.cast(schema)


def pair_key(turns: Sequence[tuple[str, str]], chosen: str, rejected: str) -> bytes:
    """The canonical bytes a pair's id hashes: compact UTF-8 JSON of
    ``[[[role, content], ...], chosen, rejected]`` (unambiguous, whatever the text holds)."""
    return orjson.dumps([turns, chosen, rejected])  # orjson writes tuples as arrays


def pair_id(conversation: list[dict], chosen: str, rejected: str) -> str:
    """Content-derived id: 128-bit BLAKE2b of :func:`pair_key`, hex."""
    return turns_pair_id([(m["role"], m["content"]) for m in conversation], chosen, rejected)


def turns_pair_id(turns: Sequence[tuple[str, str]], chosen: str, rejected: str) -> str:
    """:func:`pair_id` of a conversation given as (role, content) turns."""
    return hashlib.blake2b(pair_key(turns, chosen, rejected), digest_size=16).hexdigest()


def empty_attributes() -> dict[str, None]:
    return {name: None for name in ATTRIBUTE_NAMES}
