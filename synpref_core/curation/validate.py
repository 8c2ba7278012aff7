"""Row validation shared by every format (DESIGN §1 pre-processing).

Order of checks, first failure wins: types, text encoding, roles (only the chat format's
``system``, ``user`` and ``assistant``), a prompt that ends on a user turn (the responses answer
it), a non-empty user turn, empty sides, identical sides, oversize fields. Each failure is a
:class:`RowError` with the code the quarantine file records. :func:`content_error` holds the
rules after the type and role checks, so a caller that already has well-typed strings of one
user turn (the columnar ingest path) applies the very same ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synpref_core.ingest.readers import RowError

ROLES = ("system", "user", "assistant")  # the roles of the chat format that export writes


def validate_draft(draft: dict[str, Any], max_field_chars: int) -> None:
    """Raise RowError if the draft cannot be a valid preference pair."""
    conversation = draft.get("conversation")
    if not isinstance(conversation, list):
        raise RowError("wrong_type", "conversation is not a list of messages")
    named: list[tuple[str, Any]] = [
        ("chosen", draft.get("chosen")),
        ("rejected", draft.get("rejected")),
    ]
    has_user = False
    for i, message in enumerate(conversation):
        if not isinstance(message, dict):
            raise RowError("wrong_type", f"conversation[{i}] is not a message")
        role, content = message.get("role"), message.get("content")
        named += [(f"conversation[{i}].role", role), (f"conversation[{i}].content", content)]
        has_user = has_user or (role == "user" and isinstance(content, str) and content.strip())
    for name, value in named:
        if not isinstance(value, str):
            raise RowError("wrong_type", f"{name} is {type(value).__name__}, expected a string")
        if not value.isascii():  # ASCII text cannot hold surrogates; skip the encode
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise RowError("undecodable_text", f"{name} has an unpaired surrogate") from exc
    for i, message in enumerate(conversation):
        if message["role"] not in ROLES:
            raise RowError(
                "bad_role",
                f"conversation[{i}].role is {message['role']!r}; the chat format has "
                f"{', '.join(ROLES)}",
            )
    if conversation and conversation[-1]["role"] != "user":
        raise RowError(
            "prompt_not_ending_in_user",
            f"the conversation ends with a {conversation[-1]['role']} turn; the responses must "
            "answer a user turn",
        )
    error = content_error(
        bool(has_user), draft["chosen"], draft["rejected"], named, max_field_chars
    )
    if error is not None:
        raise error


def content_error(
    has_user: bool,
    chosen: str,
    rejected: str,
    named: Sequence[tuple[str, str]],
    max_field_chars: int,
) -> RowError | None:
    """The first content rule a well-typed pair breaks, or None: a non-empty user turn, both
    sides non-empty and different once stripped, no field in ``named`` (every text field, by
    name) over ``max_field_chars``."""
    if not has_user:
        return RowError("empty_prompt", "the conversation has no non-empty user turn")
    chosen, rejected = chosen.strip(), rejected.strip()
    if not chosen:
        return RowError("empty_side", "chosen is empty")
    if not rejected:
        return RowError("empty_side", "rejected is empty")
    if chosen == rejected:
        return RowError("identical_sides", "chosen and rejected are the same text")
    for name, value in named:
        if len(value) > max_field_chars:
            return RowError(
                "oversize_field", f"{name} has {len(value)} characters (limit {max_field_chars})"
            )
    return None
