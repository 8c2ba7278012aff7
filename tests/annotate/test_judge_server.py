"""The local judge server (a stand-in for LLM judges) through the official ``openai`` client:
tiny real reward models, a real uvicorn server on a loopback port, the real prompts and parser."""

from __future__ import annotations

import math
from urllib.parse import urlparse

import numpy as np
import openai
import pytest
import torch
from typer.testing import CliRunner

from synpref_core.annotate.ensemble import judge_pairs, read_vote
from synpref_core.annotate.judge_server import serve, verdict_answers
from synpref_core.annotate.parse import parse_attributes, parse_verdict, unpermute
from synpref_core.annotate.prompts import (
    build_attribute_messages,
    build_judge_messages,
    draw_permutation,
)
from synpref_core.cli import app
from synpref_core.rm.model import load_reward_model, trained_max_length
from synpref_core.rm.scoring import score_table
from tests.rm_helpers import tiny_model_dir

QUESTIONS = [
    ("Write a python function that reverses a list.", "def rev(x): return x[::-1]", "Use a loop."),
    ("What is the capital of France?", "Paris.", "It is Lyon, the largest city of France."),
    ("Tell me a short story about a cat.", "A cat sat on a mat and dreamed.", "No."),
    ("Should I learn piano or guitar first?", "Piano builds theory.", "Guitar, obviously!!!"),
]
PAIRS = [
    {"pair_id": f"p{i}", "conversation": [{"role": "user", "content": q}], "chosen": c,
     "rejected": r, "task_category": {"value": "other", "source": "llm"}}
    for i, (q, c, r) in enumerate(QUESTIONS)
]  # fmt: skip


@pytest.fixture(scope="module")
def judges(tmp_path_factory) -> dict[str, str]:
    return {
        "best": str(tiny_model_dir(tmp_path_factory.mktemp("best"), seed=0)),
        "gold": str(tiny_model_dir(tmp_path_factory.mktemp("gold"), seed=1)),
    }


@pytest.fixture(scope="module")
def client(judges):
    url, stop = serve(judges)
    yield openai.OpenAI(base_url=url + "/v1", api_key="local", max_retries=0)
    stop()


def ask(client, model: str, messages: list[dict], **kwargs) -> list[str]:
    response = client.chat.completions.create(model=model, messages=messages, **kwargs)
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    return [choice.message.content for choice in response.choices]


def test_models_are_listed_and_served_on_loopback(client, judges):
    assert [m.id for m in client.models.list()] == ["best", "gold"]
    assert urlparse(str(client.base_url)).hostname == "127.0.0.1"


def test_deterministic_judge_ignores_the_shown_order(client, judges):
    for model, path in judges.items():
        rm, tokenizer = load_reward_model(path, dtype=torch.float32)
        for pair in PAIRS:
            scores = score_table(
                rm, tokenizer, [pair["conversation"]], [pair["chosen"]], [pair["rejected"]],
                max_length=trained_max_length(path), token_budget=4096,
            )  # fmt: skip
            expected = "chosen" if scores.r_chosen[0] > scores.r_rejected[0] else "rejected"
            orders = {draw_permutation(0, pair["pair_id"], s): s for s in range(16)}
            assert len(orders) == 2  # both orders are asked
            for permutation, sample in orders.items():
                prompt = build_judge_messages(pair, PAIRS, seed=0, sample=sample)
                (answer,) = ask(client, model, prompt.messages, temperature=0)
                assert unpermute(parse_verdict(answer), permutation) == expected


def test_verdicts_are_drawn_from_the_bradley_terry_probability():
    answers = verdict_answers((1.0, 0.0), 1.0, 4000, np.random.default_rng(0))
    share = sum(parse_verdict(a) == 1 for a in answers) / len(answers)
    assert abs(share - 1 / (1 + math.exp(-1.0))) < 0.03
    hot = verdict_answers((1.0, 0.0), 2.0, 4000, np.random.default_rng(0))
    assert sum(parse_verdict(a) == 1 for a in hot) / len(hot) < share  # T flattens
    (tie,) = verdict_answers((0.5, 0.5), 0.0, 1, np.random.default_rng(0))
    assert parse_verdict(tie) is None


def test_temperature_varies_samples_with_a_seed_stable_outcome(client):
    prompt = build_judge_messages(PAIRS[1], PAIRS, seed=0)
    answers = ask(client, "best", prompt.messages, temperature=2.0, n=24, seed=11)
    assert {parse_verdict(a) for a in answers} == {1, 2}
    assert ask(client, "best", prompt.messages, temperature=2.0, n=24, seed=11) == answers
    assert ask(client, "best", prompt.messages, temperature=2.0, n=24) == ask(
        client, "best", prompt.messages, temperature=2.0, n=24
    )  # no seed: the request's hash seeds it

    def run() -> list:
        votes = []
        for pair in PAIRS:
            for model in ("best", "gold"):
                for sample in range(5):
                    prompt = build_judge_messages(pair, PAIRS, seed=3, sample=sample)
                    (answer,) = ask(client, model, prompt.messages, temperature=0.7, seed=sample)
                    votes.append(read_vote(pair["pair_id"], model, sample, prompt, answer))
        return judge_pairs(votes, ["best", "gold"])

    first = run()
    assert [j.outcome for j in run()] == [j.outcome for j in first]
    assert all(
        len(j.votes) == 10 and j.outcome in ("agree", "disagree", "undecided") for j in first
    )


def test_attribute_answers_parse_into_valid_attributes(client):
    messages, _ = build_attribute_messages(PAIRS[0])
    (answer,) = ask(client, "gold", messages, temperature=0.7)
    attributes = parse_attributes(answer)
    assert attributes.task_category == "coding & debugging"
    assert attributes.objectivity == "objective"
    messages, _ = build_attribute_messages(PAIRS[2])
    assert parse_attributes(ask(client, "gold", messages)[0]).objectivity == "subjective"


def test_unknown_models_and_prompts_without_a_pair_are_refused(client):
    messages = [{"role": "user", "content": "Which is better?"}]
    with pytest.raises(openai.NotFoundError, match="nope"):
        client.chat.completions.create(model="nope", messages=messages)
    with pytest.raises(openai.BadRequestError, match="CONVERSATION"):
        client.chat.completions.create(model="best", messages=messages)


def test_serve_judge_cli_checks_its_models(tmp_path):
    result = CliRunner().invoke(app, ["serve-judge", "--model", "best"])
    assert result.exit_code == 2 and "NAME=DIR" in result.output
    result = CliRunner().invoke(app, ["serve-judge", "--model", f"best={tmp_path / 'none'}"])
    assert result.exit_code == 2 and "no such model directory" in result.output
