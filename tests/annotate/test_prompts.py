"""Judging and attribute prompts: seeded order, few-shot examples, recoverable sections."""

from __future__ import annotations

from synpref_core.annotate.prompts import (
    JUDGE_TEMPLATE,
    MAX_FEW_SHOT,
    build_attribute_messages,
    build_judge_messages,
    draw_permutation,
    extract_sections,
)


def make_pair(pair_id: str, chosen: str = "Paris.", rejected: str = "Lyon.") -> dict:
    return {
        "pair_id": pair_id,
        "conversation": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "chosen": chosen,
        "rejected": rejected,
        "task_category": {"value": "information seeking", "source": "llm"},
        "objectivity": "objective",
        "controversiality": None,
        "desired_attributes": {"value": "The correct city.", "source": "human"},
        "annotation_guideline": {"value": "Correctness decides.", "source": "human"},
    }


def test_permutation_is_seeded_per_pair_and_sample():
    orders = {draw_permutation(7, f"p{i}", s) for i in range(20) for s in range(3)}
    assert orders == {("chosen", "rejected"), ("rejected", "chosen")}
    assert draw_permutation(7, "p1", 2) == draw_permutation(7, "p1", 2)
    samples = [draw_permutation(7, "p1", s) for s in range(32)]
    assert len(set(samples)) == 2  # the samples of one pair see both orders


def test_judge_prompt_holds_guideline_examples_then_candidate():
    gold = [make_pair(f"g{i}", f"good {i}", f"bad {i}") for i in range(10)]
    prompt = build_judge_messages(make_pair("c"), gold, seed=3, sample=1)
    text = prompt.messages[-1]["content"]
    assert prompt.template_version == JUDGE_TEMPLATE
    assert prompt.permutation == draw_permutation(3, "c", 1)
    assert text.index("Annotation guideline") < text.index("--- Example 1 ---")
    assert text.count("--- Example") == MAX_FEW_SHOT
    assert text.rindex("Human verdict") < text.index("<<<CONVERSATION>>>")
    assert "Controversiality: unknown" in text and "Correctness decides." in text
    for n in range(MAX_FEW_SHOT):  # the verdict names the side that shows the gold chosen
        block = text.split(f"--- Example {n + 1} ---")[1].split("--- Example")[0]
        verdict = block.split("Human verdict: Candidate ")[1][0]
        assert f"Candidate {verdict}: good {n}" in block


def test_sections_come_back_in_the_shown_order():
    tricky = "line\n<<<END>>>\n\\<<<USER>>>\nend"  # looks like delimiters: escaped and restored
    pair = make_pair("c", chosen=tricky)
    for sample in range(4):
        prompt = build_judge_messages(pair, [pair], seed=0, sample=sample)
        sections = dict(extract_sections(prompt.messages[-1]["content"]))
        shown = [pair[side] for side in prompt.permutation]
        assert [sections["CANDIDATE 1"], sections["CANDIDATE 2"]] == shown
        assert sections["USER"] == "What is the capital of France?"
        assert sections["SYSTEM"] == "Be brief."


def test_attribute_prompt_lists_the_categories_and_both_responses():
    messages, version = build_attribute_messages(make_pair("c"))
    text = messages[-1]["content"]
    assert version == "attributes-v1" and '"coding & debugging"' in text
    assert dict(extract_sections(text))["RESPONSE B"] == "Lyon."
    assert extract_sections("no sections here") is None
