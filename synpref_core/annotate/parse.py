"""Reading judges' answers: a verdict (Candidate 1 / 2) and drafted attributes (DESIGN §1, §2).

:func:`parse_verdict` accepts the shapes real models answer in, tried in this order:

1. JSON (bare, fenced, or the last ``{...}`` in the text): ``{"winner": 2}``,
   ``{"better": "Candidate 1"}`` (keys: winner, better, verdict, answer, choice, preferred, best);
2. a bare number: ``2``, ``(1)``;
3. a final answer after reasoning: the last ``Final answer: Candidate 1`` / ``Verdict: 2``;
4. a decisive phrase naming one candidate: ``**Candidate 1** is better``, ``I prefer Candidate 2``;
5. text that names exactly one candidate: ``Candidate 2``.

Text naming both candidates without a decisive phrase, or neither, is no verdict (``None``):
a guess would put noise into the votes. :func:`unpermute` maps a verdict back through the order
the prompt showed the sides in.

:func:`parse_attributes` validates a drafted attribute object (the 12 Magpie task categories,
objective / subjective, low / medium / high, two non-empty free texts), tolerant of Markdown
fences, text around the JSON, and case; anything else raises :class:`AttributeParseError`.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from synpref_core.schema import TASK_CATEGORIES

Verdict = Literal[1, 2]
Side = Literal["chosen", "rejected"]

_VERDICT_KEYS = ("winner", "better", "verdict", "answer", "choice", "preferred", "best")
_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.S)
_BARE = re.compile(r"^\W*([12])\W*$")
_CANDIDATE = r"(?:candidate|response)\s*#?\s*\**\s*([12])\b"
# "answer" alone may introduce a candidate's own answer ("the answer is 1"): only with a name.
_LEAD = r"\**\s*(?:is\s*)?[:=\-]?\s*\**\s*"
_FINAL = re.compile(
    rf"(?:final\s+answer|verdict|winner|answer){_LEAD}{_CANDIDATE}"
    rf"|(?:final\s+answer|verdict|winner){_LEAD}([12])\b",
    re.I,
)
_DECISIVE = re.compile(
    rf"{_CANDIDATE}\**\s+(?:is|was)\s+(?:clearly\s+|slightly\s+)?(?:the\s+)?"
    rf"(?:better|preferred|superior|stronger)|(?:prefer|choose|pick|select)\s+\**{_CANDIDATE}",
    re.I,
)
_MENTION = re.compile(_CANDIDATE, re.I)


class AttributeParseError(ValueError):
    """A drafted attribute answer is not one valid attribute object."""


class Attributes(BaseModel):
    """The five preference attributes of DESIGN §1, as a judge drafts them."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task_category: str = Field(description="One of the 12 Magpie task categories.")
    objectivity: Literal["objective", "subjective"]
    controversiality: Literal["low", "medium", "high"]
    desired_attributes: str = Field(min_length=1)
    annotation_guideline: str = Field(min_length=1)

    @field_validator("task_category", "objectivity", "controversiality", mode="before")
    @classmethod
    def _normalise(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("task_category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        if value not in TASK_CATEGORIES:
            raise ValueError(f"{value!r} is not one of {', '.join(TASK_CATEGORIES)}")
        return value

    @field_validator("desired_attributes", "annotation_guideline")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


def parse_verdict(text: str) -> Verdict | None:
    """1 or 2 when the answer names one candidate as the better; None otherwise."""
    for reader in (_json_verdict, _bare_verdict, _final_verdict, _decisive_verdict):
        if (verdict := reader(text)) is not None:
            return verdict
    return _single({int(m) for m in _MENTION.findall(text)})


def unpermute(verdict: Verdict, permutation: tuple[str, str]) -> Side:
    """The stored side that Candidate ``verdict`` was (``permutation[i]``: Candidate i + 1)."""
    if verdict not in (1, 2):
        raise ValueError(f"a verdict is 1 or 2, got {verdict!r}")
    return permutation[verdict - 1]  # type: ignore[return-value]


def _json_verdict(text: str) -> Verdict | None:
    for block in reversed(_JSON_OBJECT.findall(text)):
        try:
            data = json.loads(block)
        except json.JSONDecodeError:
            continue
        lowered = {str(k).lower(): v for k, v in data.items()}
        for key in _VERDICT_KEYS:
            value = lowered.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value if value in (1, 2) else None
            if isinstance(value, str):
                return _bare_verdict(value) or _single({int(m) for m in _MENTION.findall(value)})
    return None


def _bare_verdict(text: str) -> Verdict | None:
    match = _BARE.match(text.strip())
    return int(match.group(1)) if match else None  # type: ignore[return-value]


def _final_verdict(text: str) -> Verdict | None:
    matches = _FINAL.findall(text)
    if not matches:
        return None
    named, bare = matches[-1]
    return int(named or bare)  # type: ignore[return-value]


def _decisive_verdict(text: str) -> Verdict | None:
    return _single({int(a or b) for a, b in _DECISIVE.findall(text)})


def _single(numbers: set[int]) -> Verdict | None:
    return numbers.pop() if len(numbers) == 1 else None  # type: ignore[return-value]


def parse_attributes(text: str) -> Attributes:
    """The attributes in a model's answer: a JSON object, possibly fenced or with text around
    it. Raises :class:`AttributeParseError` naming what is wrong."""
    body = re.sub(r"```(?:json)?", "", text, flags=re.I)
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise AttributeParseError(f"no JSON object in the answer: {text[:80]!r}")
    try:
        data = json.loads(body[start : end + 1])
    except json.JSONDecodeError as exc:
        raise AttributeParseError(f"the answer's JSON does not parse: {exc}") from exc
    if not isinstance(data, dict):
        raise AttributeParseError("the answer's JSON is not an object")
    try:
        return Attributes.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise AttributeParseError(f"invalid attributes: {problems}") from exc
