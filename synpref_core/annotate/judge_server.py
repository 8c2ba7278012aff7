"""The local judge server: an OpenAI-compatible HTTP endpoint backed by local reward models.

**A stand-in for real LLM judges** (DESIGN §7, "LLM judges", embedded default): it lets the
annotation stages run end to end on one machine with no GPU and no network, over the same
protocol (``GET /v1/models``, ``POST /v1/chat/completions``) that vLLM, SGLang or a hosted API
speak at scale. Its judgements are only as good as the reward models behind it.

Each served "model" is a name for a reward-model checkpoint (e.g. ``best`` = the registered best
RM, ``gold`` = an RM trained on gold pairs). A judging request is read **only from the prompt
text**: the server finds the delimited pair sections that
:mod:`synpref_core.annotate.prompts` writes, scores Candidate 1 and Candidate 2 with the RM,
and answers ``Final answer: Candidate k`` with k = 1 drawn with probability
σ((r₁ − r₂) / T) at the request's ``temperature`` T (T = 0: the higher reward; equal rewards:
a tie, no candidate named). Draws come from a generator seeded by a hash of the request (its
``seed`` included), so a request answers the same every time, while the ``n`` choices of one
request, or requests with other seeds, vary at T > 0: self-consistency over samples means
something. (Unlike a hosted API, a request without ``seed`` is not random: send one seed per
sample.) The server never opens a dataset, so it cannot see stored labels.

An attribute-drafting request (the ``attributes`` template) gets the five attributes of
DESIGN §1 as fenced JSON, by simple keyword rules over the last user turn and templated free
texts: enough to exercise parsing and the stages, no more.

Run by hand (foreground)::

    synpref serve-judge --model best=RM_DIR --model gold=GOLD_RM_DIR --port 8008

and point an OpenAI client at ``http://127.0.0.1:8008/v1``. The stages start it with
:func:`serve` on a free local port when no judge endpoint is configured. It binds 127.0.0.1
unless told otherwise.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from synpref_core.annotate.prompts import extract_sections

# Keyword rules of the attribute stand-in: the first category with a matching word wins.
_CATEGORY_WORDS = (
    ("coding & debugging", r"code|python|function|bug|compile|javascript|sql|program\w*"),
    ("math", r"calculate|solve|equation|integral|probability|math\w*|\d+\s*[-+*/^]\s*\d+"),
    ("data analysis", r"data(set)?|statistics|average|median|chart|spreadsheet"),
    ("creative writing", r"story|poem|lyrics|fiction|haiku"),
    ("editing", r"rewrite|edit|proofread|grammar|rephrase|paraphrase"),
    ("role playing", r"pretend|role\s*play|act as"),
    ("brainstorming", r"ideas|brainstorm"),
    ("planning", r"plan|schedule|itinerary"),
    ("advice seeking", r"should i|advice|recommend|how (do|can) i"),
    ("reasoning", r"why|puzzle|logic\w*|riddle"),
    ("information seeking", r"what|who|when|where|which|explain|tell me"),
)
_OBJECTIVE = {"coding & debugging", "math", "data analysis", "reasoning", "information seeking"}
_GUIDELINES = {
    True: "Prefer the response that is correct and complete; length and formatting do not count.",
    False: "Prefer the response that better serves the user's stated wishes and taste; length "
    "and formatting do not count.",
}
REWARD_CACHE = 4096  # rewards of recent (conversation, response) kept per served model
_CONTROVERSIAL = r"politic\w*|religio\w*|abortion|gun|vaccin\w*|immigra\w*|racis\w*|war"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    """The fields of an OpenAI chat-completion request this server uses (others are ignored)."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    n: int = Field(1, ge=1, le=128)
    seed: int | None = None
    stream: bool = False


class RewardJudge:
    """One served model: a reward-model checkpoint that scores the two candidates."""

    def __init__(self, path: str, device: str = "auto"):
        from synpref_core.rm.model import load_reward_model, trained_max_length
        from synpref_core.rm.scoring import resolve_device, resolve_dtype

        target = resolve_device(device)
        model, self.tokenizer = load_reward_model(path, dtype=resolve_dtype("auto", target))
        self.model = model.to(target).eval()
        self.max_length = trained_max_length(path)
        self.lock = threading.Lock()  # one forward pass at a time per model
        # The n samples of a pair (and its other order) ask for the same two rewards: score once.
        self.recent: OrderedDict[str, float] = OrderedDict()

    def rewards(self, conversation: list[dict], first: str, second: str) -> tuple[float, float]:
        from synpref_core.rm.scoring import score_table

        keys = [json.dumps([conversation, text]) for text in (first, second)]
        with self.lock:
            if not all(k in self.recent for k in keys):
                scores = score_table(
                    self.model, self.tokenizer, [conversation], [first], [second],
                    self.max_length, token_budget=2 * self.max_length,
                )  # fmt: skip
                self.remember(keys[0], float(scores.r_chosen[0]))
                self.remember(keys[1], float(scores.r_rejected[0]))
            return self.recent[keys[0]], self.recent[keys[1]]

    def remember(self, key: str, reward: float) -> None:
        self.recent[key] = reward
        self.recent.move_to_end(key)
        while len(self.recent) > REWARD_CACHE:
            self.recent.popitem(last=False)


def request_rng(request: ChatRequest) -> np.random.Generator:
    """Draws for one request, from a hash of its model, messages, temperature, n and seed: the
    same request answers the same; another ``seed`` (say, one per sample) draws anew."""
    fields = {"model", "messages", "temperature", "n", "seed"}
    digest = hashlib.sha256(request.model_dump_json(include=fields).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def verdict_answers(
    rewards: tuple[float, float], temperature: float, n: int, rng: np.random.Generator
) -> list[str]:
    """n answers naming Candidate 1 with probability σ((r₁ − r₂) / T); T = 0: the argmax."""
    r1, r2 = rewards
    head = f"Reward of Candidate 1: {r1:.4f}; reward of Candidate 2: {r2:.4f}.\n"
    if temperature == 0:
        if r1 == r2:
            return [head + "Tie: neither candidate is better."] * n
        return [head + f"Final answer: Candidate {1 if r1 > r2 else 2}"] * n
    p_first = 0.5 * (1.0 + math.tanh((r1 - r2) / temperature / 2))  # σ(x) without overflow
    return [head + f"Final answer: Candidate {1 if u < p_first else 2}" for u in rng.random(n)]


def draft_attributes(conversation: list[dict]) -> dict[str, str]:
    """The five attributes by keyword rules over the last user turn (a stand-in, see above)."""
    users = [m["content"] for m in conversation if m["role"] == "user"]
    text = (users[-1] if users else "").lower()
    category = next(
        (name for name, words in _CATEGORY_WORDS if re.search(rf"\b(?:{words})\b", text)), "other"
    )
    objective = category in _OBJECTIVE
    controversial = re.search(rf"\b(?:{_CONTROVERSIAL})\b", text) is not None
    return {
        "task_category": category,
        "objectivity": "objective" if objective else "subjective",
        "controversiality": "high" if controversial else ("low" if objective else "medium"),
        "desired_attributes": f"A {category} answer that does exactly what the user asked, "
        "accurately, completely and concisely.",
        "annotation_guideline": _GUIDELINES[objective],
    }


def answer_texts(judge: RewardJudge, request: ChatRequest) -> list[str]:
    """The n answers to a request; ValueError when the prompt holds no pair sections."""
    sections = extract_sections(request.messages[-1].text())
    if sections is None:
        raise ValueError("the last message holds no <<<CONVERSATION>>> ... <<<END>>> sections")
    turns = [s for s in sections if s[0] in ("USER", "ASSISTANT", "SYSTEM")]
    conversation = [{"role": name.lower(), "content": text} for name, text in turns]
    named = dict(sections)
    if "CANDIDATE 1" in named and "CANDIDATE 2" in named:
        rewards = judge.rewards(conversation, named["CANDIDATE 1"], named["CANDIDATE 2"])
        return verdict_answers(rewards, request.temperature, request.n, request_rng(request))
    if "RESPONSE A" in named:
        body = json.dumps(draft_attributes(conversation), indent=2)
        return [f"```json\n{body}\n```"] * request.n
    raise ValueError("the pair sections hold neither CANDIDATE 1/2 nor RESPONSE A/B")


def completion(request: ChatRequest, answers: list[str]) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` object; tokens are counted as whitespace-separated words."""
    prompt_tokens = sum(len(m.text().split()) for m in request.messages)
    completion_tokens = sum(len(a.split()) for a in answers)
    digest = hashlib.sha256(request.model_dump_json().encode()).hexdigest()[:24]
    return {
        "id": f"chatcmpl-{digest}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
            for i, text in enumerate(answers)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def create_app(models: Mapping[str, str], device: str = "auto") -> Any:
    """The FastAPI app serving each ``name → reward-model directory`` as a judge model.
    Models load here, so a bad path fails before the server listens."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    if not models:
        raise ValueError("give at least one judge model (NAME=DIR)")
    judges = {name: RewardJudge(path, device) for name, path in models.items()}
    app = FastAPI(title="synpref local judge (reward-model stand-in for LLM judges)")

    def error(status: int, message: str, kind: str) -> JSONResponse:
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return JSONResponse(body, status_code=status)

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "synpref"} for n in judges]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(request: ChatRequest) -> dict[str, Any] | JSONResponse:
        if request.model not in judges:
            return error(404, f"model {request.model!r} is not served here", "not_found_error")
        if request.stream:
            return error(400, "streaming is not supported", "invalid_request_error")
        try:
            answers = answer_texts(judges[request.model], request)
        except ValueError as exc:
            return error(400, str(exc), "invalid_request_error")
        return completion(request, answers)

    return app


def serve(
    models: Mapping[str, str], host: str = "127.0.0.1", port: int = 0, device: str = "auto"
) -> tuple[str, Callable[[], None]]:
    """Start the judge server in a background thread: (base URL, stop). ``port=0``: a free
    port. Binds ``host``, the loopback interface by default."""
    import uvicorn

    app = create_app(models, device)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"the judge server did not start on {host}:{port}")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    bound = sock.getsockname()[1]
    return (
        f"http://[{host}]:{bound}" if family == socket.AF_INET6 else f"http://{host}:{bound}"
    ), stop
