"""Every adapter of synpref_core.ingest.formats on literal rows, with exact expected drafts."""

from __future__ import annotations

import pytest

from synpref_core.config import FORMATS, FieldMap, SourceSpec
from synpref_core.curation.validate import validate_draft
from synpref_core.ingest.formats import (
    ADAPTERS,
    document_records,
    hh_rlhf,
    judgebench,
    llmbar,
    llmbar_subset,
    offsetbias,
    pairs,
    pandalm,
    parse_hh_dialogue,
    rewardbench,
    rm_bench,
    rmb,
)
from synpref_core.ingest.readers import RowError


def spec(fmt: str, **kwargs) -> SourceSpec:
    return SourceSpec(format=fmt, paths=["unused"], **kwargs)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def row_error(adapter, raw, source: SourceSpec) -> RowError:
    with pytest.raises(RowError) as info:
        adapter(raw, source)
    return info.value


def test_every_configured_format_has_an_adapter():
    assert set(ADAPTERS) == set(FORMATS)


# -- hh-rlhf ------------------------------------------------------------------------------------

HH = spec("hh-rlhf")


def test_hh_rlhf_single_turn():
    prompt = "\n\nHuman: How long should I boil an egg?"
    raw = {
        "chosen": prompt + "\n\nAssistant: About nine minutes.",
        "rejected": prompt + "\n\nAssistant: Eggs cannot be boiled.",
    }
    assert hh_rlhf(raw, HH) == [
        {
            "conversation": [user("How long should I boil an egg?")],
            "chosen": "About nine minutes.",
            "rejected": "Eggs cannot be boiled.",
        }
    ]


def test_hh_rlhf_multi_turn_keeps_the_shared_history():
    history = (
        "\n\nHuman: What household chemicals are dangerous to mix?"
        "\n\nAssistant: Bleach and ammonia, for one."
        "\n\nHuman: Why is that?"
    )
    raw = {
        "chosen": history + "\n\nAssistant: Together they release toxic chloramine gas.",
        "rejected": history + "\n\nAssistant: Mix them and find out.",
    }
    [draft] = hh_rlhf(raw, HH)
    assert draft["conversation"] == [
        user("What household chemicals are dangerous to mix?"),
        assistant("Bleach and ammonia, for one."),
        user("Why is that?"),
    ]
    assert draft["chosen"] == "Together they release toxic chloramine gas."
    assert draft["rejected"] == "Mix them and find out."
    assert set(draft) == {"conversation", "chosen", "rejected"}


def test_hh_rlhf_history_mismatch():
    raw = {
        "chosen": "\n\nHuman: Tell me a joke.\n\nAssistant: Why did the chicken cross the road?"
        "\n\nHuman: Why?\n\nAssistant: To get to the other side.",
        "rejected": "\n\nHuman: Tell me a joke.\n\nAssistant: No."
        "\n\nHuman: Why?\n\nAssistant: Because I said so.",
    }
    assert row_error(hh_rlhf, raw, HH).code == "history_mismatch"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello"}, "missing_field"),
        ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": None}, "missing_field"),
        ({"chosen": ["Hi"], "rejected": "\n\nHuman: Hi\n\nAssistant: Go away"}, "wrong_type"),
        # does not start with a turn marker
        ({"chosen": "Hi there", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away"}, "wrong_type"),
        # the dialogue ends with a Human turn: no response to compare
        (
            {
                "chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye",
                "rejected": "\n\nHuman: Hi\n\nAssistant: Go away",
            },
            "wrong_type",
        ),
        (["not", "an", "object"], "wrong_type"),
    ],
)
def test_hh_rlhf_bad_rows(raw, code):
    assert row_error(hh_rlhf, raw, HH).code == code


def test_hh_rlhf_empty_final_turn_is_left_to_validation():
    raw = {
        "chosen": "\n\nHuman: Say something.\n\nAssistant:",
        "rejected": "\n\nHuman: Say something.\n\nAssistant: Something.",
    }
    [draft] = hh_rlhf(raw, HH)
    assert draft["chosen"] == ""
    assert draft["rejected"] == "Something."
    with pytest.raises(RowError) as info:
        validate_draft(draft, max_field_chars=1000)
    assert info.value.code == "empty_side"


def test_parse_hh_dialogue_roles_and_contents():
    text = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c  \n\nAssistant: d"
    assert parse_hh_dialogue(text, "chosen") == [
        user("a"),
        assistant("b"),
        user("c  "),
        assistant("d"),
    ]


# -- PandaLM ------------------------------------------------------------------------------------

PANDALM = spec("pandalm")


def panda(votes: tuple[int, int, int], extra_input: str = "") -> dict:
    a1, a2, a3 = votes
    return {
        "idx": 7,
        "motivation_app": "Grammarly",
        "cmp_key": "llama-7b_bloom-7b",
        "instruction": "Fix the grammar of the sentence.",
        "input": extra_input,
        "response1": "She go to school every days.",
        "response2": "She goes to school every day.",
        "annotator1": a1,
        "annotator2": a2,
        "annotator3": a3,
    }


def test_pandalm_unanimous_for_response2():
    [draft] = pandalm(panda((2, 2, 2), extra_input="she go to school every days"), PANDALM)
    assert draft == {
        "conversation": [user("Fix the grammar of the sentence.\n\nshe go to school every days")],
        "chosen": "She goes to school every day.",
        "rejected": "She go to school every days.",
        "human_votes": [1, 1, 1],
        "controversiality": "low",
        "subset": "Grammarly",
        "meta": {"idx": 7, "cmp_key": "llama-7b_bloom-7b"},
    }


def test_pandalm_two_of_three_for_response1():
    [draft] = pandalm(panda((1, 1, 2)), PANDALM)
    # the blank input adds nothing to the prompt
    assert draft["conversation"] == [user("Fix the grammar of the sentence.")]
    assert draft["chosen"] == "She go to school every days."
    assert draft["rejected"] == "She goes to school every day."
    assert draft["human_votes"] == [1, 1, 0]
    assert draft["controversiality"] == "medium"


def test_pandalm_majority_beside_a_tie_vote():
    [draft] = pandalm(panda((2, 0, 2), extra_input="   "), PANDALM)
    assert draft["conversation"] == [user("Fix the grammar of the sentence.")]
    assert draft["chosen"] == "She goes to school every day."
    assert draft["human_votes"] == [1, -1, 1]
    assert draft["controversiality"] == "medium"


@pytest.mark.parametrize("votes", [(0, 0, 1), (0, 0, 0), (0, 1, 2), (2, 0, 1)])
def test_pandalm_tie_majority_or_no_majority_is_no_preference(votes):
    assert row_error(pandalm, panda(votes), PANDALM).code == "no_preference"


def test_pandalm_bad_rows():
    assert row_error(pandalm, panda((1, 3, 1)), PANDALM).code == "wrong_type"
    missing = panda((1, 1, 1))
    del missing["annotator3"]
    assert row_error(pandalm, missing, PANDALM).code == "missing_field"
    not_text = panda((1, 1, 1))
    not_text["response1"] = True  # the real test set has six such boolean responses
    assert row_error(pandalm, not_text, PANDALM).code == "wrong_type"
    bad_input = panda((1, 1, 1))
    bad_input["input"] = ["a list"]
    assert row_error(pandalm, bad_input, PANDALM).code == "wrong_type"


# -- LLMBar -------------------------------------------------------------------------------------

LLMBAR = spec("llmbar")


def bar(label) -> dict:
    return {
        "input": "List two mammals that can fly or glide.",
        "output_1": "Bats and flying squirrels.",
        "output_2": "Eagles and bats.",
        "label": label,
    }


def test_llmbar_label_1_and_2():
    assert llmbar(bar(1), LLMBAR) == [
        {
            "conversation": [user("List two mammals that can fly or glide.")],
            "chosen": "Bats and flying squirrels.",
            "rejected": "Eagles and bats.",
        }
    ]
    [draft] = llmbar(bar(2), LLMBAR)
    assert (draft["chosen"], draft["rejected"]) == (
        "Eagles and bats.",
        "Bats and flying squirrels.",
    )


def test_llmbar_bad_labels():
    assert row_error(llmbar, bar(0), LLMBAR).code == "no_preference"
    assert row_error(llmbar, bar(3), LLMBAR).code == "no_preference"
    assert row_error(llmbar, bar(None), LLMBAR).code == "missing_field"
    no_output = bar(1)
    del no_output["output_2"]
    assert row_error(llmbar, no_output, LLMBAR).code == "missing_field"


@pytest.mark.parametrize(
    ("path", "subset"),
    [
        ("data/llmbar/Dataset/LLMBar/Natural/dataset.json", "LLMBar/Natural"),
        (
            "data/llmbar/Dataset/LLMBar/Adversarial/GPTInst/dataset.json",
            "LLMBar/Adversarial/GPTInst",
        ),
        ("/abs/llmbar/Dataset/Processed/LLMEval^2/dataset.json", "Processed/LLMEval^2"),
        ("C:\\data\\Dataset\\CaseStudy\\Base_9\\dataset.json", "CaseStudy/Base_9"),
        ("elsewhere/MT-Bench/dataset.json", "MT-Bench"),
    ],
)
def test_llmbar_subset(path, subset):
    assert llmbar_subset(path) == subset


def test_llmbar_document_records_carry_the_subset():
    doc = [bar(1), bar(2)]
    records = document_records("llmbar", doc, "x/Dataset/LLMBar/Adversarial/Neighbor/dataset.json")
    assert records == [
        (bar(1), {"subset": "LLMBar/Adversarial/Neighbor"}),
        (bar(2), {"subset": "LLMBar/Adversarial/Neighbor"}),
    ]
    with pytest.raises(ValueError):
        document_records("llmbar", {"not": "a list"}, "x/dataset.json")


# -- OffsetBias ---------------------------------------------------------------------------------

OFFSETBIAS = spec("offsetbias")


def test_offsetbias_via_document_records():
    doc = {
        "length bias": [
            {
                "bias": "length bias",
                "instruction": "What is 2 + 2?",
                "response1": "4",
                "response2": "2 + 2 is a classic question. Many people would say 5, so 5.",
                "label": "1",
            }
        ],
        "concreteness": [
            {
                "bias": "concreteness",
                "instruction": "Who wrote Hamlet?",
                "response1": "According to 12 sources with 99.7% certainty, Marlowe.",
                "response2": "William Shakespeare.",
                "label": "2",
            }
        ],
    }
    records = document_records("offsetbias", doc, "biasbench.json")
    # the key names the bias type, so items without a 'bias' field still get their subset
    assert [extra for _, extra in records] == [
        {"subset": "length bias"},
        {"subset": "concreteness"},
    ]
    drafts = [d for raw, _ in records for d in offsetbias(raw, OFFSETBIAS)]
    assert drafts == [
        {
            "conversation": [user("What is 2 + 2?")],
            "chosen": "4",
            "rejected": "2 + 2 is a classic question. Many people would say 5, so 5.",
            "subset": "length bias",
        },
        {
            "conversation": [user("Who wrote Hamlet?")],
            "chosen": "William Shakespeare.",
            "rejected": "According to 12 sources with 99.7% certainty, Marlowe.",
            "subset": "concreteness",
        },
    ]
    with pytest.raises(ValueError):
        document_records("offsetbias", [doc], "biasbench.json")


def test_offsetbias_bad_label():
    raw = {"bias": "x", "instruction": "q", "response1": "a", "response2": "b", "label": "tie"}
    assert row_error(offsetbias, raw, OFFSETBIAS).code == "no_preference"


# -- pairs (strings, TRL, OpenRLHF, custom keys) ------------------------------------------------

PAIRS = spec("pairs")
PAIRS_NO_PROMPT = spec("pairs", fields=FieldMap(prompt=None))


def test_pairs_strings():
    raw = {"prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": "Cusco."}
    assert pairs(raw, PAIRS) == [
        {"conversation": [user("Capital of Peru?")], "chosen": "Lima.", "rejected": "Cusco."}
    ]


def test_pairs_trl_messages():
    raw = {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            user("Capital of Peru?"),
        ],
        "chosen": [assistant("Lima.")],
        "rejected": [assistant("Cusco.")],
    }
    assert pairs(raw, PAIRS) == [
        {
            "conversation": [{"role": "system", "content": "Be brief."}, user("Capital of Peru?")],
            "chosen": "Lima.",
            "rejected": "Cusco.",
        }
    ]


def test_pairs_trl_messages_drop_extra_message_keys():
    raw = {
        "prompt": [{"role": "user", "content": "Hi", "name": "bob"}],
        "chosen": [{"role": "assistant", "content": "Hello!", "weight": 1}],
        "rejected": [assistant("Go away.")],
    }
    [draft] = pairs(raw, PAIRS)
    assert draft["conversation"] == [user("Hi")]
    assert draft["chosen"] == "Hello!"


def test_pairs_openrlhf_full_conversations():
    history = [user("Recommend a film."), assistant("Try Spirited Away."), user("Something older?")]
    raw = {
        "chosen": [*history, assistant("Casablanca, from 1942.")],
        "rejected": [*history, assistant("Try Spirited Away.")],
    }
    expected = [
        {
            "conversation": history,
            "chosen": "Casablanca, from 1942.",
            "rejected": "Try Spirited Away.",
        }
    ]
    assert pairs(raw, PAIRS_NO_PROMPT) == expected
    # the default field map reads OpenRLHF rows too: no prompt key needed
    assert pairs(raw, PAIRS) == expected


def test_pairs_openrlhf_with_a_repeated_prompt_is_not_doubled():
    raw = {
        "prompt": "Capital of Peru?",
        "chosen": [user("Capital of Peru?"), assistant("Lima.")],
        "rejected": [user("Capital of Peru?"), assistant("Cusco.")],
    }
    [draft] = pairs(raw, PAIRS)
    assert draft["conversation"] == [user("Capital of Peru?")]
    assert (draft["chosen"], draft["rejected"]) == ("Lima.", "Cusco.")


def test_pairs_custom_field_map():
    source = spec("pairs", fields=FieldMap(prompt="question", chosen="good", rejected="bad"))
    raw = {"question": "2 + 3?", "good": "5", "bad": "6", "prompt": "ignored", "chosen": "x"}
    assert pairs(raw, source) == [
        {"conversation": [user("2 + 3?")], "chosen": "5", "rejected": "6"}
    ]
    assert row_error(pairs, {"prompt": "a", "chosen": "b", "rejected": "c"}, source).code == (
        "missing_field"
    )


def test_pairs_history_mismatch():
    raw = {
        "chosen": [user("Hi"), assistant("Hello."), user("Joke?"), assistant("Knock knock.")],
        "rejected": [user("Hey"), assistant("Hello."), user("Joke?"), assistant("No.")],
    }
    assert row_error(pairs, raw, PAIRS_NO_PROMPT).code == "history_mismatch"
    # a string side has no history, so it cannot match a whole conversation either
    mixed = {"prompt": "Hi", "chosen": "Hello.", "rejected": [user("Hi"), assistant("Bye.")]}
    assert row_error(pairs, mixed, PAIRS).code == "history_mismatch"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ({"chosen": "a", "rejected": "b"}, "missing_field"),  # default map wants a prompt
        ({"prompt": "q", "chosen": "a"}, "missing_field"),
        ({"prompt": "q", "chosen": 5, "rejected": "b"}, "wrong_type"),
        ({"prompt": "q", "chosen": [assistant("a")], "rejected": [user("b")]}, "wrong_type"),
        ({"prompt": "q", "chosen": [], "rejected": [assistant("b")]}, "empty_side"),
        ({"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"}, "wrong_type"),
        (
            {"prompt": [{"role": "user", "content": 3}], "chosen": "a", "rejected": "b"},
            "wrong_type",
        ),
        ({"prompt": 42, "chosen": "a", "rejected": "b"}, "wrong_type"),
    ],
)
def test_pairs_bad_rows(raw, code):
    assert row_error(pairs, raw, PAIRS).code == code


# -- RM-Bench -----------------------------------------------------------------------------------

RM_BENCH = spec("rm-bench")
RM_ROW = {
    "id": 17,
    "prompt": "Is 91 prime?",
    "chosen": ["No.", "No, 91 = 7 × 13.", "**No.** 91 = 7 × 13."],
    "rejected": ["Yes.", "Yes, 91 has no divisors.", "**Yes.** 91 has no divisors."],
    "subset": "math",
}


def test_rm_bench_gives_the_3x3_grid():
    drafts = rm_bench(RM_ROW, RM_BENCH)
    assert len(drafts) == 9
    cells = [(d["meta"]["chosen_style"], d["meta"]["rejected_style"]) for d in drafts]
    assert cells == [(i, j) for i in range(3) for j in range(3)]
    for draft in drafts:
        i, j = draft["meta"]["chosen_style"], draft["meta"]["rejected_style"]
        assert draft["chosen"] == RM_ROW["chosen"][i]
        assert draft["rejected"] == RM_ROW["rejected"][j]
        assert draft["conversation"] == [user("Is 91 prime?")]
        assert draft["subset"] == "math"
        assert draft["group_id"] == "rm-bench:17"
        assert draft["meta"]["id"] == 17
    # hard cell: concise chosen against markdown rejected
    assert drafts[2]["chosen"] == "No."
    assert drafts[2]["rejected"] == "**Yes.** 91 has no divisors."


@pytest.mark.parametrize(
    "change",
    [
        {"chosen": ["a", "b"]},
        {"rejected": "one string"},
        {"chosen": ["a", "b", 3]},
    ],
)
def test_rm_bench_bad_rows(change):
    assert row_error(rm_bench, {**RM_ROW, **change}, RM_BENCH).code == "wrong_type"


def test_rm_bench_missing_prompt():
    raw = {k: v for k, v in RM_ROW.items() if k != "prompt"}
    assert row_error(rm_bench, raw, RM_BENCH).code == "missing_field"


# -- RMB ----------------------------------------------------------------------------------------

RMB = spec("rmb")
RMB_CONVERSATION = [
    {"role": "user", "content": "Suggest a name for a cat.", "language": "English"},
    {"role": "assistant", "content": "How about Miso?", "language": "English"},
    {"role": "user", "content": "Another one, please.", "language": "English"},
]
RMB_HISTORY = [
    user("Suggest a name for a cat."),
    assistant("How about Miso?"),
    user("Another one, please."),
]


def test_rmb_pairwise():
    raw = {
        "pair_uid": "p-1",
        "conversation_input": RMB_CONVERSATION,
        "chosen": {"llm_name": "m1", "answer": "Pepper."},
        "reject": {"llm_name": "m2", "answer": "Miso."},
        "category_path": "Pairwise_set/Helpfulness/Brainstorming/Names",
    }
    assert rmb(raw, RMB) == [
        {
            "conversation": RMB_HISTORY,
            "chosen": "Pepper.",
            "rejected": "Miso.",
            "subset": "Pairwise_set/Helpfulness/Brainstorming/Names",
            "meta": {
                "kind": "pairwise",
                "pair_uid": "p-1",
                "chosen_model": "m1",
                "rejected_model": "m2",
            },
        }
    ]


def test_rmb_best_of_n_gives_one_pair_per_loser():
    raw = {
        "bon_uid": "b-9",
        "conversation_input": RMB_CONVERSATION,
        "bon_best": {"llm_name": "best", "answer": "Pepper."},
        "loser_list": [
            {"llm_name": "l0", "answer": "Miso."},
            {"llm_name": "l1", "answer": "Cat."},
            {"llm_name": "l2", "answer": "I don't name pets."},
        ],
        "category_path": ["BoN_set", "Helpfulness", "Brainstorming"],
    }
    drafts = rmb(raw, RMB)
    assert len(drafts) == 3
    assert [d["rejected"] for d in drafts] == ["Miso.", "Cat.", "I don't name pets."]
    assert {d["chosen"] for d in drafts} == {"Pepper."}
    assert {d["group_id"] for d in drafts} == {"rmb-bon:b-9"}
    assert {d["subset"] for d in drafts} == {"BoN_set/Helpfulness/Brainstorming"}
    assert all(d["conversation"] == RMB_HISTORY for d in drafts)
    assert [d["meta"] for d in drafts] == [
        {
            "kind": "bon",
            "bon_uid": "b-9",
            "loser": i,
            "chosen_model": "best",
            "rejected_model": f"l{i}",
        }
        for i in range(3)
    ]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"loser_list": []}, "wrong_type"),
        ({"loser_list": "Miso."}, "wrong_type"),
        ({"loser_list": [{"llm_name": "l0"}]}, "missing_field"),
        ({"bon_best": "Pepper."}, "wrong_type"),
        ({"conversation_input": "Suggest a name"}, "wrong_type"),
        ({"conversation_input": [{"role": "user"}]}, "wrong_type"),
    ],
)
def test_rmb_bad_best_of_n_rows(change, code):
    raw = {
        "bon_uid": "b-1",
        "conversation_input": RMB_CONVERSATION,
        "bon_best": {"llm_name": "best", "answer": "Pepper."},
        "loser_list": [{"llm_name": "l0", "answer": "Miso."}],
        **change,
    }
    assert row_error(rmb, raw, RMB).code == code


def test_rmb_pairwise_missing_reject():
    raw = {
        "pair_uid": "p",
        "conversation_input": RMB_CONVERSATION,
        "chosen": {"llm_name": "m", "answer": "Pepper."},
    }
    assert row_error(rmb, raw, RMB).code == "missing_field"


# -- JudgeBench ---------------------------------------------------------------------------------

JUDGEBENCH = spec("judgebench")


def judge_row(label: str) -> dict:
    return {
        "pair_id": "jb-1",
        "original_id": "orig-1",
        "source": "mmlu-pro-math",
        "question": "What is 7 × 8?",
        "response_model": "gpt-4o",
        "response_A": "56",
        "response_B": "54",
        "label": label,
    }


def test_judgebench_a_better():
    assert judgebench(judge_row("A>B"), JUDGEBENCH) == [
        {
            "conversation": [user("What is 7 × 8?")],
            "chosen": "56",
            "rejected": "54",
            "subset": "mmlu-pro-math",
            "meta": {
                "pair_id": "jb-1",
                "original_id": "orig-1",
                "response_model": "gpt-4o",
                "label": "A>B",
            },
        }
    ]


def test_judgebench_b_better():
    [draft] = judgebench(judge_row("B>A"), JUDGEBENCH)
    assert (draft["chosen"], draft["rejected"]) == ("54", "56")
    assert draft["meta"]["label"] == "B>A"


@pytest.mark.parametrize(
    ("label", "code"), [("A=B", "no_preference"), ("a>b", "no_preference"), (None, "missing_field")]
)
def test_judgebench_bad_label(label, code):
    assert row_error(judgebench, judge_row(label), JUDGEBENCH).code == code


# -- RewardBench --------------------------------------------------------------------------------

REWARDBENCH = spec("rewardbench")


def test_rewardbench():
    raw = {
        "prompt": "Name a noble gas.",
        "chosen": "Neon.",
        "rejected": "Nitrogen.",
        "subset": "alpacaeval-easy",
        "id": 3,
        "chosen_model": "gpt4",
        "rejected_model": "alpaca",
    }
    assert rewardbench(raw, REWARDBENCH) == [
        {
            "conversation": [user("Name a noble gas.")],
            "chosen": "Neon.",
            "rejected": "Nitrogen.",
            "subset": "alpacaeval-easy",
            "meta": {"id": 3, "chosen_model": "gpt4", "rejected_model": "alpaca"},
        }
    ]
    assert row_error(rewardbench, {"prompt": "q", "chosen": "a"}, REWARDBENCH).code == (
        "missing_field"
    )
    assert (
        row_error(rewardbench, {"prompt": "q", "chosen": "a", "rejected": 1}, REWARDBENCH).code
        == "wrong_type"
    )
