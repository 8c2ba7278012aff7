"""Parsing judges' answers: every answer shape real models produce, refusals, attributes."""

from __future__ import annotations

import json

import pytest

from synpref_core.annotate.parse import (
    AttributeParseError,
    parse_attributes,
    parse_verdict,
    unpermute,
)

REASONING = (
    "Candidate 1 states the capital correctly. Candidate 2 names Lyon, which is wrong, although "
    "Candidate 2 is more polite.\n\nFinal answer: Candidate 1"
)


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("2", 2),
        (" 1.\n", 1),
        ("Candidate 2", 2),
        ("**Candidate 1** is better", 1),
        ("I prefer Candidate 2.", 2),
        ("Candidate 2 is better than Candidate 1.", 2),
        ('{"winner": 2}', 2),
        ('{"better": "Candidate 1"}', 1),
        ('```json\n{"Verdict": "2"}\n```', 2),
        ('My analysis... so: {"reasoning": "shorter", "winner": 1}', 1),
        (REASONING, 1),
        ("Verdict: **Candidate 2**", 2),
        ("Final answer: 2", 2),
        ("Candidate 2 says the answer is 1.", 2),  # "answer is 1" is the candidate's own answer
    ],
)
def test_answer_shapes(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Both candidates are fine.",
        "Candidate 1 and Candidate 2 are equally good.",
        "Tie: neither candidate is better.",
        "3",
        '{"winner": 3}',
    ],
)
def test_refusals_and_ambiguity_are_no_verdict(text):
    assert parse_verdict(text) is None


def test_unpermute_maps_back_through_the_shown_order():
    assert unpermute(1, ("chosen", "rejected")) == "chosen"
    assert unpermute(1, ("rejected", "chosen")) == "rejected"
    assert unpermute(2, ("rejected", "chosen")) == "chosen"
    with pytest.raises(ValueError, match="1 or 2"):
        unpermute(3, ("chosen", "rejected"))


ATTRIBUTES = {
    "task_category": "Coding & Debugging",
    "objectivity": "objective",
    "controversiality": "low",
    "desired_attributes": "Working code.",
    "annotation_guideline": "Prefer the one that runs.",
}


def test_attributes_parse_from_fenced_json_with_text_around():
    answer = f"Here you go:\n```json\n{json.dumps(ATTRIBUTES)}\n```\nHope this helps."
    attributes = parse_attributes(answer)
    assert attributes.task_category == "coding & debugging"
    assert attributes.annotation_guideline == "Prefer the one that runs."


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task_category": "cooking"}, "task_category"),
        ({"objectivity": "neutral"}, "objectivity"),
        ({"controversiality": "extreme"}, "controversiality"),
        ({"desired_attributes": "  "}, "desired_attributes"),
        ({"annotation_guideline": None}, "annotation_guideline"),
    ],
)
def test_invalid_attributes_name_the_field(change, message):
    with pytest.raises(AttributeParseError, match=message):
        parse_attributes(json.dumps({**ATTRIBUTES, **change}))


def test_attribute_answers_without_an_object_are_errors():
    for text in ("no json", "{not json}", "[1, 2]"):
        with pytest.raises(AttributeParseError):
            parse_attributes(text)
