"""Preference-aware judging prompts and attribute-drafting prompts (DESIGN §2 step 3, §1).

A judging prompt holds, in this order: the annotation guideline (the template's text), up to
:data:`MAX_FEW_SHOT` gold few-shot examples (the retrieved similar gold pairs, each with its
attributes and the human verdict), then the candidate with its attributes. The candidate's two
responses appear as "Candidate 1" / "Candidate 2" in a random order drawn from
(seed, pair_id, sample): the same request always shows the same order, each of the n samples of a
pair draws its own, and the order is returned (``permutation``) so the verdict maps back
(:func:`synpref_core.annotate.parse.unpermute`). A few-shot example shows its sides in an order
drawn the same way, so no position is taught as "the good one".

Templates are versioned files under ``templates/`` (``judge-v1.txt``, ``attributes-v1.txt``); a
change of wording is a new file, and the version is returned with every prompt so each record
names the template it was produced with.

The pair itself is laid out in delimited sections, one per turn and per response, so that a
program can read it back (:func:`extract_sections`, used by the local judge server)::

    <<<CONVERSATION>>>
    <<<USER>>>
    ...
    <<<CANDIDATE 1>>>
    ...
    <<<CANDIDATE 2>>>
    ...
    <<<END>>>

A text line that looks like a delimiter gets a leading backslash (undone on reading).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from string import Template
from typing import Any, NamedTuple

from synpref_core.schema import TASK_CATEGORIES

TEMPLATES = Path(__file__).parent / "templates"
JUDGE_TEMPLATE = "judge-v1"
ATTRIBUTES_TEMPLATE = "attributes-v1"
MAX_FEW_SHOT = 8  # DESIGN §2: up to 8 gold examples per candidate
SIDES = ("chosen", "rejected")
# The three categorical attributes, then the two free texts (DESIGN §1).
ATTRIBUTE_LABELS = {
    "task_category": "Task category",
    "objectivity": "Preference objectivity",
    "controversiality": "Controversiality",
    "desired_attributes": "Desired attributes",
    "annotation_guideline": "Annotation guideline for this pair",
}
_DELIMITER = re.compile(r"^\\*<<<[A-Z0-9 ]+>>>$")
_SECTION = re.compile(r"^<<<([A-Z0-9 ]+)>>>$")


class JudgePrompt(NamedTuple):
    """Chat messages; ``permutation[i]`` is the stored side shown as Candidate i + 1."""

    messages: list[dict[str, str]]
    permutation: tuple[str, str]
    template_version: str


@cache
def load_template(version: str) -> Template:
    """The template file ``templates/<version>.txt`` (``$name`` placeholders)."""
    path = TEMPLATES / f"{version}.txt"
    if not path.is_file():
        raise ValueError(f"no prompt template {version!r} in {TEMPLATES}")
    return Template(path.read_text(encoding="utf-8"))


def draw_permutation(seed: int, pair_id: str, sample: int) -> tuple[str, str]:
    """The order the sides are shown in, a pure function of (seed, pair_id, sample)."""
    digest = hashlib.sha256(f"{seed}\x1f{pair_id}\x1f{sample}".encode()).digest()
    return SIDES if digest[0] % 2 == 0 else SIDES[::-1]


def build_judge_messages(
    candidate: Mapping[str, Any],
    few_shot: Sequence[Mapping[str, Any]],
    seed: int,
    sample: int = 0,
    template: str = JUDGE_TEMPLATE,
) -> JudgePrompt:
    """The judging prompt of sample ``sample`` of ``candidate``.

    ``candidate`` and each few-shot example are pair rows (``pair_id``, ``conversation``,
    ``chosen``, ``rejected`` and the attribute columns, as ``{value, source}`` structs or plain
    strings; missing attributes are shown as unknown), e.g. rows of
    :func:`synpref_core.retrieval.retrieve.few_shot_examples`. A few-shot example's ``chosen``
    is the human-preferred side. Only the first :data:`MAX_FEW_SHOT` examples are used."""
    permutation = draw_permutation(seed, candidate["pair_id"], sample)
    examples = [
        render_example(n, gold, draw_permutation(seed, gold["pair_id"], -1))
        for n, gold in enumerate(few_shot[:MAX_FEW_SHOT], start=1)
    ]
    text = load_template(template).substitute(
        examples=render_examples_block(examples),
        attributes=render_attributes(candidate),
        pair=render_pair(candidate["conversation"], _shown(candidate, permutation), "CANDIDATE"),
    )
    return JudgePrompt([{"role": "user", "content": text}], permutation, template)


def build_attribute_messages(
    pair: Mapping[str, Any], template: str = ATTRIBUTES_TEMPLATE
) -> tuple[list[dict[str, str]], str]:
    """(messages, template_version) asking a model to draft the five attributes of ``pair``."""
    text = load_template(template).substitute(
        categories=", ".join(f'"{c}"' for c in TASK_CATEGORIES),
        pair=render_pair(pair["conversation"], (pair["chosen"], pair["rejected"]), "RESPONSE"),
    )
    return [{"role": "user", "content": text}], template


def render_examples_block(examples: list[str]) -> str:
    if not examples:
        return "No human-verified examples are available for this pair."
    head = "Human-verified examples of similar pairs, with the human verdict:"
    return "\n\n".join([head, *examples])


def render_example(n: int, gold: Mapping[str, Any], permutation: tuple[str, str]) -> str:
    """Gold example ``n``: attributes, conversation, both sides, the human verdict."""
    turns = [f"{m['role'].title()}: {escape(m['content'])}" for m in gold["conversation"]]
    shown = _shown(gold, permutation)
    winner = permutation.index("chosen") + 1
    return "\n".join(
        [
            f"--- Example {n} ---",
            render_attributes(gold),
            "Conversation:",
            *turns,
            f"Candidate 1: {escape(shown[0])}",
            f"Candidate 2: {escape(shown[1])}",
            f"Human verdict: Candidate {winner}",
        ]
    )


def render_attributes(pair: Mapping[str, Any]) -> str:
    return "\n".join(
        f"{label}: {attribute_value(pair.get(name)) or 'unknown'}"
        for name, label in ATTRIBUTE_LABELS.items()
    )


def attribute_value(value: Any) -> str | None:
    """The text of an attribute stored as ``{value, source}`` or as a plain string."""
    return value.get("value") if isinstance(value, Mapping) else value


def render_pair(conversation: Sequence[Mapping[str, str]], texts: Sequence[str], kind: str) -> str:
    """The delimited sections of a conversation and two responses (``kind`` 1 / 2 or A / B)."""
    labels = ("1", "2") if kind == "CANDIDATE" else ("A", "B")
    lines = ["<<<CONVERSATION>>>"]
    for message in conversation:
        lines += [f"<<<{message['role'].upper()}>>>", escape(message["content"])]
    for label, text in zip(labels, texts, strict=True):
        lines += [f"<<<{kind} {label}>>>", escape(text)]
    lines.append("<<<END>>>")
    return "\n".join(lines)


def _shown(pair: Mapping[str, Any], permutation: tuple[str, str]) -> tuple[str, str]:
    return pair[permutation[0]], pair[permutation[1]]


def escape(text: str) -> str:
    """Prefix a backslash to every line that looks like a section delimiter."""
    return "\n".join("\\" + ln if _DELIMITER.match(ln) else ln for ln in text.split("\n"))


def unescape(text: str) -> str:
    return "\n".join(ln[1:] if _DELIMITER.match(ln) else ln for ln in text.split("\n"))


def extract_sections(prompt: str) -> list[tuple[str, str]] | None:
    """The (NAME, text) sections of the last delimited pair in ``prompt``, in order, from
    ``<<<CONVERSATION>>>`` to ``<<<END>>>`` (both excluded); None when there is none."""
    lines = prompt.split("\n")
    starts = [i for i, ln in enumerate(lines) if ln == "<<<CONVERSATION>>>"]
    if not starts:
        return None
    sections: list[tuple[str, list[str]]] = []
    for line in lines[starts[-1] + 1 :]:
        if line == "<<<END>>>":
            return [(name, unescape("\n".join(body))) for name, body in sections]
        if match := _SECTION.match(line):
            sections.append((match.group(1), []))
        elif sections:
            sections[-1][1].append(line)
    return None
