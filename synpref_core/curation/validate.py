"""Row validation shared by every format (DESIGN §1 pre-processing).

Order of checks, first failure wins: types, text encoding, roles (only the chat format's
``system``, ``user`` and ``assistant``), a prompt with a non-empty user turn that ends on a user
turn (the responses answer it), empty sides, identical sides, oversize fields. Each failure is
a :class:`RowError` with the code the quarantine file records.
"""

from __future__ import annotations

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
    if not has_user:
        raise RowError("empty_prompt", "the conversation has no non-empty user turn")
    if conversation[-1]["role"] != "user":
        raise RowError(
            "prompt_not_ending_in_user",
            f"the conversation ends with a {conversation[-1]['role']} turn; the responses must "
            "answer a user turn",
        )
    chosen, rejected = draft["chosen"].strip(), draft["rejected"].strip()
    if not chosen:
        raise RowError("empty_side", "chosen is empty")
    if not rejected:
        raise RowError("empty_side", "rejected is empty")
    if chosen == rejected:
        raise RowError("identical_sides", "chosen and rejected are the same text")
    for name, value in named:
        if len(value) > max_field_chars:
            raise RowError(
                "oversize_field", f"{name} has {len(value)} characters (limit {max_field_chars})"
            )
