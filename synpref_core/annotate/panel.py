"""The judge panel: which judge models answer, how often, how their votes merge, and the local
judge server that stands in for them when no endpoint is configured (DESIGN §2 step 3, §7).

    panel = JudgePanel(endpoints=[EndpointConfig(name="qwen", base_url=..., model=...), ...])
    panel = JudgePanel(local_models={"best": RM_DIR, "gold": GOLD_RM_DIR})  # the stand-in

With ``endpoints`` empty, :func:`open_panel` starts the local judge server
(:mod:`synpref_core.annotate.judge_server`, reward models read only from the prompt: a stand-in
for real LLM judges) on a free loopback port and serves each ``local_models`` entry under a name
that carries its checkpoint's fingerprint, so the request cache never serves an answer of other
weights. The annotation stages open the panel once per process (on each Ray actor), so the same
config runs locally and on a cluster; at scale, point ``endpoints`` at vLLM or a hosted API
(``infra/vllm/``).

:func:`panel_identity` is what a judgement depends on: the judge models (their fingerprints for
local ones), sampling, template, seed and merge rule; never a URL, a key's variable, a
concurrency limit or the cache's place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field, model_validator

from synpref_core.annotate.client import ClientConfig, EndpointConfig, check_endpoints
from synpref_core.annotate.ensemble import EnsembleConfig
from synpref_core.annotate.prompts import ATTRIBUTES_TEMPLATE, JUDGE_TEMPLATE
from synpref_core.config import DEFAULT_HOME, StrictModel

LOCAL_CONCURRENCY = 8  # requests in flight to the local server: it scores one pair at a time
# Fields of an endpoint that say how to reach it, never what it answers.
_ENDPOINT_RUNTIME = {
    "base_url",
    "api_key_env",
    "max_concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "timeout_s",
    "max_retries",
    "backoff_base_s",
    "backoff_max_s",
    "retry_after_max_s",
    "price_per_1k_input",
    "price_per_1k_output",
}


class JudgePanel(StrictModel):
    """The judge ensemble (ours: n = 5 samples at T = 0.7, majority per model, then over
    models; a tie is undecided)."""

    endpoints: list[EndpointConfig] = Field(
        [], description="OpenAI-compatible judge endpoints, one model each; empty: local server."
    )
    local_models: dict[str, str] = Field(
        {},
        description="Used when `endpoints` is empty: judge name → reward-model directory, "
        "served by the local judge server (a stand-in for LLM judges).",
    )
    samples: int = Field(5, ge=1, description="Self-consistency samples per model and pair.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature of the judges.")
    max_tokens: int = Field(512, ge=1, description="Answer length limit per request.")
    seed: int = Field(0, description="Seeds the candidate order and each sample's request.")
    judge_template: str = Field(JUDGE_TEMPLATE, description="Judging prompt template version.")
    attribute_template: str = Field(ATTRIBUTES_TEMPLATE, description="Attribute prompt version.")
    attribute_judge: str | None = Field(
        None, description="Endpoint (or local judge) that drafts attributes; None: the first."
    )
    ensemble: EnsembleConfig = Field(EnsembleConfig(), description="Cross-model merge rule.")
    cache_dir: str = Field(
        str(DEFAULT_HOME / "judge-cache"), description="Content-addressed request cache."
    )

    @model_validator(mode="after")
    def _attribute_judge_is_known(self) -> JudgePanel:
        if self.attribute_judge is not None and self.attribute_judge not in self.judge_names():
            raise ValueError(
                f"attribute_judge {self.attribute_judge!r} is not one of {self.judge_names()}"
            )
        return self

    def judge_names(self) -> list[str]:
        return [e.name for e in self.endpoints] if self.endpoints else list(self.local_models)

    def drafting_judge(self) -> str:
        names = self.judge_names()
        if not names:
            raise ValueError("the judge panel is empty: give endpoints or local_models")
        return self.attribute_judge or names[0]


@dataclass(frozen=True)
class OpenPanel:
    """A panel ready for requests: the client config (local endpoints resolved) and how to
    stop the local server, if one was started."""

    client: ClientConfig
    stop: Callable[[], None]


def served_name(name: str, path: str) -> str:
    """The model name the local server gives a checkpoint: its judge name and fingerprint."""
    from synpref_core.models import model_fingerprint

    return f"{name}-{model_fingerprint(path)[:12]}"


def panel_identity(panel: JudgePanel) -> str:
    """A hash of what the panel's answers depend on (see the module docstring)."""
    record: dict[str, Any] = panel.model_dump(
        mode="json", exclude={"endpoints", "local_models", "cache_dir"}
    )
    if panel.endpoints:
        record["endpoints"] = [e.model_dump(exclude=_ENDPOINT_RUNTIME) for e in panel.endpoints]
    else:
        record["local"] = {n: served_name(n, p) for n, p in sorted(panel.local_models.items())}
    text = json.dumps(record, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def open_panel(panel: JudgePanel) -> OpenPanel:
    """Check the endpoints are up (one line naming the URL when one is down), or start the
    local judge server on a free loopback port."""
    if panel.endpoints:
        config = ClientConfig(endpoints=panel.endpoints, cache_dir=panel.cache_dir, seed=panel.seed)
        check_endpoints(config)
        return OpenPanel(config, lambda: None)
    if not panel.local_models:
        raise ValueError("the judge panel is empty: give endpoints or local_models")
    from synpref_core.annotate.judge_server import serve

    served = {served_name(n, p): p for n, p in panel.local_models.items()}
    url, stop = serve(served)
    endpoints = [
        EndpointConfig(
            name=name,
            base_url=f"{url}/v1",
            model=served_name(name, path),
            max_concurrency=LOCAL_CONCURRENCY,
        )
        for name, path in panel.local_models.items()
    ]
    client = ClientConfig(endpoints=endpoints, cache_dir=panel.cache_dir, seed=panel.seed)
    return OpenPanel(client, stop)


_SHARED: dict[tuple[str, str], OpenPanel] = {}


def shared_panel(panel: JudgePanel) -> OpenPanel:
    """:func:`open_panel`, once per process and panel: the stages of a run (attributes, then
    judging) share one local server; it stops when the process exits."""
    key = (panel_identity(panel), panel.model_dump_json(include={"endpoints", "cache_dir"}))
    if key not in _SHARED:
        _SHARED[key] = open_panel(panel)
    return _SHARED[key]
