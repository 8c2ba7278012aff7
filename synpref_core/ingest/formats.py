"""One adapter per input format: a raw record in, zero or more pair drafts out.

A draft is a plain dict with ``conversation`` (messages up to the last user turn), ``chosen``,
``rejected`` and optionally ``subset``, ``group_id``, ``meta``, ``human_votes`` and
``controversiality``. Adapters raise :class:`RowError` with a reason for a record that cannot be
a pair; they do not validate text (``curation.validate`` does that for every format alike).

Formats (field names exactly as the datasets publish them):

- ``hh-rlhf``: ``{chosen, rejected}`` dialogues ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``. The
  two must share the history; 5 rows of the harmless test split do not (``history_mismatch``).
- ``pandalm``: ``instruction, input, response1, response2, annotator1..3`` (1/2 = better, 0 =
  tie). The majority wins; a tie majority or no majority is ``no_preference``. Agreement sets
  controversiality: 3 of 3 low, 2 of 3 medium.
- ``llmbar``: ``{input, output_1, output_2, label}``; the subset is the folder under ``Dataset/``.
- ``offsetbias``: an object keyed by bias type of ``{instruction, response1, response2, label}``.
- ``pairs``: ``prompt/chosen/rejected`` as strings or message lists (TRL / OpenRLHF), keys
  configurable; whole conversations in ``chosen``/``rejected`` are split at the last turn.
- ``rm-bench``: ``{id, prompt, chosen[3], rejected[3], subset}`` → 9 pairs, one per cell of the
  3×3 style grid, with the style indices in ``meta``.
- ``rmb``: pairwise ``{pair_uid, conversation_input, chosen, reject, category_path}`` → 1 pair;
  best-of-N ``{bon_uid, conversation_input, bon_best, loser_list, category_path}`` → one pair per
  loser, grouped by ``bon_uid``.
- ``judgebench``: ``{pair_id, original_id, source, question, response_model, response_A,
  response_B, label}`` with label ``A>B`` / ``B>A``.
- ``rewardbench``: ``{prompt, chosen, rejected, subset, id}`` (+ model names).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from synpref_core.config import FieldMap, SourceSpec
from synpref_core.ingest.readers import RowError

Draft = dict[str, Any]

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def _field(raw: dict, key: str) -> Any:
    if key not in raw or raw[key] is None:
        raise RowError("missing_field", f"field {key!r} is missing")
    return raw[key]


def _text(raw: dict, key: str) -> str:
    value = _field(raw, key)
    if not isinstance(value, str):
        raise RowError("wrong_type", f"field {key!r} is {type(value).__name__}, expected a string")
    return value


def _require_object(raw: Any) -> dict:
    if not isinstance(raw, dict):
        raise RowError("wrong_type", f"record is {type(raw).__name__}, expected an object")
    return raw


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _messages(value: Any, key: str) -> list[dict]:
    """A message list as ``[{role, content}]`` with string fields, or RowError."""
    if not isinstance(value, list):
        raise RowError("wrong_type", f"field {key!r} is {type(value).__name__}, expected messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RowError("wrong_type", f"{key}[{i}] is not a {{role, content}} message")
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or not isinstance(content, str):
            raise RowError("wrong_type", f"{key}[{i}] role/content must be strings")
        out.append({"role": role, "content": content})
    return out


def _split_last(messages: list[dict], key: str) -> tuple[list[dict], str]:
    if not messages:
        raise RowError("empty_side", f"field {key!r} has no messages")
    last = messages[-1]
    if last["role"] != "assistant":
        raise RowError("wrong_type", f"last message of {key!r} is {last['role']!r}, not assistant")
    return messages[:-1], last["content"]


def parse_hh_dialogue(text: str, key: str) -> list[dict]:
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise RowError("wrong_type", f"{key!r} does not start with a Human/Assistant turn")
    return [
        {"role": _HH_ROLE[role], "content": content}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def hh_rlhf(raw: Any, spec: SourceSpec) -> list[Draft]:
    raw = _require_object(raw)
    history, chosen = _split_last(parse_hh_dialogue(_text(raw, "chosen"), "chosen"), "chosen")
    other, rejected = _split_last(parse_hh_dialogue(_text(raw, "rejected"), "rejected"), "rejected")
    if history != other:
        raise RowError(
            "history_mismatch", "chosen and rejected dialogues differ before the last turn"
        )
    return [{"conversation": history, "chosen": chosen, "rejected": rejected}]


def _two_way(raw: dict, prompt: str, first: str, second: str, label: Any) -> Draft:
    """A pair from responses 1/2 and a label naming the better one (1/2, ints or strings)."""
    label = str(label).strip()
    if label not in ("1", "2"):
        raise RowError("no_preference", f"label {label!r} is not 1 or 2")
    a, b = _text(raw, first), _text(raw, second)
    chosen, rejected = (a, b) if label == "1" else (b, a)
    return {"conversation": _user(prompt), "chosen": chosen, "rejected": rejected}


def pandalm(raw: Any, spec: SourceSpec) -> list[Draft]:
    raw = _require_object(raw)
    prompt = _text(raw, "instruction")
    extra = raw.get("input") or ""
    if not isinstance(extra, str):
        raise RowError("wrong_type", "field 'input' is not a string")
    if extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    votes = [_field(raw, f"annotator{i}") for i in (1, 2, 3)]
    if any(type(v) is not int or v not in (0, 1, 2) for v in votes):
        raise RowError("wrong_type", f"annotator votes {votes} are not 0, 1 or 2")
    winner = next((v for v in (0, 1, 2) if votes.count(v) >= 2), None)
    if winner in (None, 0):
        raise RowError("no_preference", f"annotators {votes}: no majority for a response")
    draft = _two_way(raw, prompt, "response1", "response2", winner)
    draft["human_votes"] = [1 if v == winner else (-1 if v == 0 else 0) for v in votes]
    draft["controversiality"] = "low" if votes.count(winner) == 3 else "medium"
    draft["subset"] = raw.get("motivation_app")
    draft["meta"] = {"idx": raw.get("idx"), "cmp_key": raw.get("cmp_key")}
    return [draft]


def llmbar_subset(path: str) -> str:
    """'.../Dataset/LLMBar/Adversarial/GPTInst/dataset.json' → 'LLMBar/Adversarial/GPTInst'."""
    parts = path.replace("\\", "/").split("/")[:-1]
    if "Dataset" in parts:
        return "/".join(parts[len(parts) - parts[::-1].index("Dataset") :])
    return parts[-1] if parts else ""


def llmbar(raw: Any, spec: SourceSpec) -> list[Draft]:
    raw = _require_object(raw)
    return [_two_way(raw, _text(raw, "input"), "output_1", "output_2", _field(raw, "label"))]


def offsetbias(raw: Any, spec: SourceSpec) -> list[Draft]:
    raw = _require_object(raw)
    draft = _two_way(raw, _text(raw, "instruction"), "response1", "response2", _field(raw, "label"))
    if raw.get("bias") is not None:
        draft["subset"] = raw["bias"]
    return [draft]


def pairs(raw: Any, spec: SourceSpec) -> list[Draft]:
    raw = _require_object(raw)
    keys: FieldMap = spec.fields
    chosen_raw, rejected_raw = _field(raw, keys.chosen), _field(raw, keys.rejected)
    prompt_raw = raw.get(keys.prompt) if keys.prompt else None
    # A prompt is needed only when a side is a bare response; OpenRLHF rows carry it inside.
    if prompt_raw is None and (isinstance(chosen_raw, str) or isinstance(rejected_raw, str)):
        raise RowError("missing_field", f"field {keys.prompt or 'prompt'!r} is missing")
    if isinstance(prompt_raw, str):
        prompt = _user(prompt_raw)
    elif prompt_raw is None:
        prompt = []
    else:
        prompt = _messages(prompt_raw, keys.prompt)
    sides = []
    for key, value in ((keys.chosen, chosen_raw), (keys.rejected, rejected_raw)):
        if isinstance(value, str):
            sides.append(([], value))
        else:
            sides.append(_split_last(_messages(value, key), key))
    (chosen_history, chosen), (rejected_history, rejected) = sides
    if chosen_history != rejected_history:
        raise RowError("history_mismatch", "chosen and rejected differ before the last turn")
    # OpenRLHF style repeats the prompt inside chosen/rejected; TRL style does not.
    if prompt and chosen_history[: len(prompt)] == prompt:
        conversation = chosen_history
    else:
        conversation = prompt + chosen_history
    return [{"conversation": conversation, "chosen": chosen, "rejected": rejected}]


def rm_bench(raw: Any, spec: SourceSpec) -> list[Draft]:
    raw = _require_object(raw)
    prompt = _text(raw, "prompt")
    chosen, rejected = _field(raw, "chosen"), _field(raw, "rejected")
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, list) or len(value) != 3:
            raise RowError("wrong_type", f"field {key!r} must be a list of 3 responses")
        if not all(isinstance(v, str) for v in value):
            raise RowError("wrong_type", f"field {key!r} must hold strings")
    item_id = _field(raw, "id")
    group = f"rm-bench:{item_id}"
    return [
        {
            "conversation": _user(prompt),
            "chosen": c,
            "rejected": r,
            "subset": raw.get("subset"),
            "group_id": group,
            "meta": {"id": item_id, "chosen_style": i, "rejected_style": j},
        }
        for i, c in enumerate(chosen)
        for j, r in enumerate(rejected)
    ]


def _rmb_answer(value: Any, key: str) -> tuple[str, Any]:
    if not isinstance(value, dict):
        raise RowError("wrong_type", f"field {key!r} must be an object with 'answer'")
    return _text(value, "answer"), value.get("llm_name")


def _rmb_conversation(raw: dict) -> list[dict]:
    messages = _field(raw, "conversation_input")
    if isinstance(messages, list):
        messages = [
            {k: m.get(k) for k in ("role", "content")} if isinstance(m, dict) else m
            for m in messages
        ]
    return _messages(messages, "conversation_input")


def _category(raw: dict) -> str | None:
    path = raw.get("category_path")
    return path if isinstance(path, str) or path is None else "/".join(map(str, path))


def rmb(raw: Any, spec: SourceSpec) -> list[Draft]:
    raw = _require_object(raw)
    conversation = _rmb_conversation(raw)
    if "bon_uid" in raw:
        best, best_model = _rmb_answer(_field(raw, "bon_best"), "bon_best")
        losers = _field(raw, "loser_list")
        if not isinstance(losers, list) or not losers:
            raise RowError("wrong_type", "field 'loser_list' must be a non-empty list")
        drafts = []
        for i, loser in enumerate(losers):
            answer, model = _rmb_answer(loser, f"loser_list[{i}]")
            drafts.append(
                {
                    "conversation": conversation,
                    "chosen": best,
                    "rejected": answer,
                    "subset": _category(raw),
                    "group_id": f"rmb-bon:{raw['bon_uid']}",
                    "meta": {
                        "kind": "bon",
                        "bon_uid": raw["bon_uid"],
                        "loser": i,
                        "chosen_model": best_model,
                        "rejected_model": model,
                    },
                }
            )
        return drafts
    chosen, chosen_model = _rmb_answer(_field(raw, "chosen"), "chosen")
    rejected, rejected_model = _rmb_answer(_field(raw, "reject"), "reject")
    return [
        {
            "conversation": conversation,
            "chosen": chosen,
            "rejected": rejected,
            "subset": _category(raw),
            "meta": {
                "kind": "pairwise",
                "pair_uid": raw.get("pair_uid"),
                "chosen_model": chosen_model,
                "rejected_model": rejected_model,
            },
        }
    ]


def judgebench(raw: Any, spec: SourceSpec) -> list[Draft]:
    raw = _require_object(raw)
    label = _field(raw, "label")
    if label not in ("A>B", "B>A"):
        raise RowError("no_preference", f"label {label!r} is not 'A>B' or 'B>A'")
    a, b = _text(raw, "response_A"), _text(raw, "response_B")
    chosen, rejected = (a, b) if label == "A>B" else (b, a)
    return [
        {
            "conversation": _user(_text(raw, "question")),
            "chosen": chosen,
            "rejected": rejected,
            "subset": raw.get("source"),
            "meta": {
                "pair_id": raw.get("pair_id"),
                "original_id": raw.get("original_id"),
                "response_model": raw.get("response_model"),
                "label": label,
            },
        }
    ]


def rewardbench(raw: Any, spec: SourceSpec) -> list[Draft]:
    raw = _require_object(raw)
    return [
        {
            "conversation": _user(_text(raw, "prompt")),
            "chosen": _text(raw, "chosen"),
            "rejected": _text(raw, "rejected"),
            "subset": raw.get("subset"),
            "meta": {
                "id": raw.get("id"),
                "chosen_model": raw.get("chosen_model"),
                "rejected_model": raw.get("rejected_model"),
            },
        }
    ]


ADAPTERS: dict[str, Callable[[Any, SourceSpec], list[Draft]]] = {
    "hh-rlhf": hh_rlhf,
    "pandalm": pandalm,
    "llmbar": llmbar,
    "offsetbias": offsetbias,
    "pairs": pairs,
    "rm-bench": rm_bench,
    "rmb": rmb,
    "judgebench": judgebench,
    "rewardbench": rewardbench,
}


def document_records(fmt: str, doc: Any, path: str) -> list[tuple[Any, dict]]:
    """Records of a whole ``.json`` document with per-record extras (e.g. the subset).

    Raises ValueError (the caller names the file) if the top-level type is wrong.
    """
    if fmt == "offsetbias":
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object keyed by bias type, got {type(doc).__name__}")
        return [
            (item, {"subset": key})
            for key, items in doc.items()
            for item in (items if isinstance(items, list) else [items])
        ]
    if not isinstance(doc, list):
        raise ValueError(f"expected a JSON array of records, got {type(doc).__name__}")
    extra = {"subset": llmbar_subset(path)} if fmt == "llmbar" else {}
    return [(item, extra) for item in doc]
