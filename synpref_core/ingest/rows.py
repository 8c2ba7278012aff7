"""The rows the normalize stage writes, built in one place for its two paths.

The row path (``normalize.py``: any format, record by record) and the columnar fast path
(``columnar.py``: plain-string ``pairs`` JSON lines, column by column) must write the same bytes.
Both take from here: the reject record, the pair row (its per-source constant columns, its id),
the raw text kept with a reject, and the validation of a single-user-turn pair.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pyarrow as pa

from synpref_core import schema
from synpref_core.config import SourceSpec
from synpref_core.curation.validate import content_error
from synpref_core.ingest.readers import RowError

Batch = tuple[pa.Table, list[dict], int]  # pairs, rejects, input records read
USER = "user"
# How validate_draft names the fields of a one-turn conversation (it checks them in this order).
_ROLE0 = ("conversation[0].role", USER)
_CONTENT0 = "conversation[0].content"


def raw_text(raw: Any) -> str:
    """The input record as text, as a reject keeps it."""
    if isinstance(raw, RowError):
        return raw.raw or ""
    try:
        return orjson.dumps(raw, default=str).decode()
    except TypeError:  # lone surrogates: keep them escaped rather than lose the row
        return json.dumps(raw, ensure_ascii=True, default=str)


def reject_row(
    run_id: str,
    source_name: str,
    path: str,
    row: int,
    error: RowError,
    raw: str | None,
    pair_id: str | None = None,
) -> dict[str, Any]:
    """A REJECT_SCHEMA row: input ``row`` of ``path`` did not become a pair, for ``error``."""
    return {
        "reason_code": error.code,
        "reason": error.reason,
        "source": source_name,
        "source_file": path,
        "source_row": row,
        "pair_id": pair_id,
        "duplicate_of": None,
        "raw": raw,
        "run_id": run_id,
    }


def source_columns(run_id: str, source: SourceSpec, path: str) -> dict[str, str]:
    """The PAIR_SCHEMA columns every pair of one source file shares."""
    return {
        "status": source.status,
        "decided_by": "source",
        "run_id": run_id,
        "source": source.source_name,
        "source_file": path,
    }


def pair_row(run_id: str, source: SourceSpec, path: str, row: int, d: dict[str, Any]) -> dict:
    """A PAIR_SCHEMA row from a validated draft (plus the format's extras)."""
    votes = d.get("human_votes")
    return {
        "pair_id": schema.pair_id(d["conversation"], d["chosen"], d["rejected"]),
        "conversation": d["conversation"],
        "chosen": d["chosen"],
        "rejected": d["rejected"],
        **schema.empty_attributes(),
        "controversiality": _attribute(d.get("controversiality")),
        "evidence": {"human_votes": votes} if votes is not None else None,
        "round": None,
        "source_row": row,
        "source_subset": d.get("subset"),
        "parent_id": None,
        "group_id": d.get("group_id"),
        "meta": json.dumps(d["meta"], sort_keys=True, default=str) if d.get("meta") else None,
        **source_columns(run_id, source, path),
    }


def _attribute(value: str | None) -> dict[str, str] | None:
    return {"value": value, "source": "source"} if value is not None else None


def user_pair_error(prompt: str, chosen: str, rejected: str, max_chars: int) -> RowError | None:
    """What ``validate_draft`` says of a pair whose conversation is one user turn of strings
    (such strings cannot hold surrogates: they came from UTF-8), without building the draft."""
    named = (("chosen", chosen), ("rejected", rejected), _ROLE0, (_CONTENT0, prompt))
    return content_error(bool(prompt.strip()), chosen, rejected, named, max_chars)


def user_pair_id(prompt: str, chosen: str, rejected: str) -> str:
    """``schema.pair_id`` of a pair whose conversation is one user turn."""
    return schema.turns_pair_id(((USER, prompt),), chosen, rejected)
