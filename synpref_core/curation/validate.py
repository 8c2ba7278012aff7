"""Row validation shared by every format (DESIGN §1 pre-processing).

Order of checks, first failure wins: types, text encoding, a prompt with a user turn, empty
sides, identical sides, oversize fields. Each failure is a :class:`RowError` with the code the
quarantine file records.
"""

from __future__ import annotations

from typing import Any

from synpref_core.ingest.readers import RowError


def _strings(draft: dict[str, Any]) -> list[tuple[str, Any]]:
    named = [("chosen", draft.get("chosen")), ("rejected", draft.get("rejected"))]
    for i, message in enumerate(draft.get("conversation") or []):
        named += [
            (f"conversation[{i}].role", message.get("role")),
            (f"conversation[{i}].content", message.get("content")),
        ]
    return named


def validate_draft(draft: dict[str, Any], max_field_chars: int) -> None:
    """Raise RowError if the draft cannot be a valid preference pair."""
    conversation = draft.get("conversation")
    if not isinstance(conversation, list) or not all(isinstance(m, dict) for m in conversation):
        raise RowError("wrong_type", "conversation is not a list of messages")
    named = _strings(draft)
    for name, value in named:
        if not isinstance(value, str):
            raise RowError("wrong_type", f"{name} is {type(value).__name__}, expected a string")
    for name, value in named:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RowError("undecodable_text", f"{name} has an unpaired surrogate: {exc}") from exc
    if not any(m["role"] == "user" and m["content"].strip() for m in conversation):
        raise RowError("empty_prompt", "the conversation has no non-empty user turn")
    chosen, rejected = draft["chosen"], draft["rejected"]
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not value.strip():
            raise RowError("empty_side", f"{name} is empty")
    if chosen.strip() == rejected.strip():
        raise RowError("identical_sides", "chosen and rejected are the same text")
    for name, value in named:
        if len(value) > max_field_chars:
            raise RowError(
                "oversize_field", f"{name} has {len(value)} characters (limit {max_field_chars})"
            )
