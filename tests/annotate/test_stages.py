"""The attribute and judging stages over real manifests: real hh-rlhf pairs embedded by the
bundled MiniLM in a real LanceDB store, judged over HTTP by the local judge server (tiny real
reward models) or by a scripted judge on a real server (tests/annotate_servers.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synpref_core.annotate.client import EndpointConfig, EndpointDownError
from synpref_core.annotate.panel import JudgePanel
from synpref_core.annotate.stages import (
    AttributeConfig,
    AttributeStage,
    JudgeConfig,
    JudgeStage,
)
from synpref_core.executors import run
from synpref_core.retrieval.retrieve import RetrievalConfig
from synpref_core.retrieval.store import VectorStore
from synpref_core.stages import StageError, load_manifest
from tests.annotate.conftest import CANDIDATES
from tests.annotate_servers import FaultServer, free_port
from tests.embed_helpers import MAX_CHARS, read_pairs
from tests.stage_helpers import write_stage

VALID = {
    "task_category": "advice seeking",
    "objectivity": "subjective",
    "controversiality": "medium",
    "desired_attributes": "Safe, honest help.",
    "annotation_guideline": "Prefer the harmless answer.",
}


def rows_of(stage_dir: str, kind: str = "data") -> list[dict]:
    return [
        r for path in load_manifest(stage_dir).paths(kind) for r in pq.read_table(path).to_pylist()
    ]


def with_human_category(table: pa.Table) -> pa.Table:
    values = table["task_category"].to_pylist()
    values[0] = {"value": "math", "source": "human"}
    index = table.schema.get_field_index("task_category")
    return table.set_column(
        index, "task_category", pa.array(values, table.schema.field(index).type)
    )


def test_attributes_are_drafted_by_the_judge_and_human_values_kept(world):
    root = world["root"]
    pairs = write_stage(with_human_category(world["candidates"]), str(root / "cand-human"))
    config = AttributeConfig(pairs=pairs, panel=world["panel"], out=str(root / "attr-1"))
    manifest = load_manifest(run(AttributeStage(config), progress=False))
    out = rows_of(config.out)
    assert len(out) == CANDIDATES and manifest.rows == CANDIDATES
    assert out[0]["task_category"] == {"value": "math", "source": "human"}
    drafted = [r[name] for r in out for name in VALID if r[name]["source"] != "human"]
    assert len(drafted) == 5 * CANDIDATES - 1
    assert all(a["source"].startswith("llm:best-") and a["value"] for a in drafted)
    counts = manifest.counts
    assert counts["drafted"] + counts["kept"] + counts.get("errors", 0) == CANDIDATES
    assert counts["drafted"] == CANDIDATES and counts["requests_sent"] == CANDIDATES

    # Another output of the same work: every answer comes from the cache, nothing is sent.
    again = config.model_copy(update={"out": str(root / "attr-2")})
    assert load_manifest(run(AttributeStage(again), progress=False)).counts["requests_sent"] == 0
    assert rows_of(again.out) == out


def scripted_attributes(messages: list[dict]) -> str:
    """Valid JSON for "fine"; invalid, then valid after the repair, for "fixable"; never
    valid for the rest."""
    prompt = messages[0]["content"]
    repaired = messages[-1]["content"].startswith("That answer is not valid")
    if "fine" in prompt or ("fixable" in prompt and repaired):
        return "Here you go:\n```json\n" + json.dumps(VALID) + "\n```"
    return '{"task_category": "cooking", "objectivity": "maybe"}'


def three_pairs(world, words: list[str]) -> pa.Table:
    table = world["candidates"].slice(0, len(words))
    conversations = [[{"role": "user", "content": f"{w}: tell me something"}] for w in words]
    index = table.schema.get_field_index("conversation")
    column = pa.array(conversations, table.schema.field(index).type)
    return table.set_column(index, "conversation", column)


def test_an_invalid_answer_is_repaired_once_then_recorded_as_an_error(world, tmp_path):
    pairs = write_stage(three_pairs(world, ["fine", "fixable", "hopeless"]), str(tmp_path / "p"))
    with FaultServer(answer=scripted_attributes) as server:
        endpoint = EndpointConfig(name="scripted", base_url=server.base_url, model="judge-test")
        panel = JudgePanel(endpoints=[endpoint], cache_dir=str(tmp_path / "cache"))
        config = AttributeConfig(pairs=pairs, panel=panel, out=str(tmp_path / "attr"))
        manifest = load_manifest(run(AttributeStage(config), progress=False))
        assert server.requests == 3 + 2  # one each, then one repair for each invalid answer
    out, errors = rows_of(config.out), rows_of(config.out, "errors")
    assert [r["task_category"] and r["task_category"]["value"] for r in out] == [
        "advice seeking", "advice seeking", None,
    ]  # fmt: skip
    assert out[1]["annotation_guideline"]["source"] == "llm:judge-test"
    assert [(e["pair_id"], e["error"]) for e in errors] == [(out[2]["pair_id"], "unparsable")]
    assert "cooking" in errors[0]["reason"] and errors[0]["raw"]
    assert manifest.counts["drafted"] + manifest.counts["errors"] == 3


def attributed(world) -> str:
    root = world["root"]
    if not (root / "attributed" / "manifest.json").exists():
        pairs = write_stage(world["candidates"], str(root / "cand"))
        config = AttributeConfig(pairs=pairs, panel=world["panel"], out=str(root / "attributed"))
        run(AttributeStage(config), progress=False)
    return str(root / "attributed")


def test_judging_uses_gold_few_shot_and_every_candidate_gets_one_outcome(world):
    root = world["root"]
    config = JudgeConfig(
        pairs=attributed(world),
        panel=world["panel"],
        store=world["store"],
        embed_max_chars=MAX_CHARS,
        out=str(root / "judged"),
    )
    manifest = load_manifest(run(JudgeStage(config), progress=False))
    out, counts = rows_of(config.out), manifest.counts
    assert len(out) == CANDIDATES
    assert sum(counts[o] for o in ("agree", "disagree", "undecided", "error")) == CANDIDATES
    assert counts["error"] == 0 and counts["zero_shot"] == 0
    gold_ids = set(read_pairs(config.pairs)["pair_id"].to_pylist())
    for row in out:
        assert len(row["few_shot_ids"]) == 8 and row["pair_id"] not in row["few_shot_ids"]
        assert not gold_ids & set(row["few_shot_ids"])  # examples are gold, never candidates
        assert len(row["votes"]) == 2 * 3 and {v["model"] for v in row["votes"]} == {"best", "gold"}
        for vote in row["votes"]:
            assert vote["side"] == vote["permutation"][vote["verdict"] - 1]
    shown = {tuple(v["permutation"]) for row in out for v in row["votes"]}
    assert shown == {("chosen", "rejected"), ("rejected", "chosen")}
    # Re-run: every shard is finished, the manifest is the same.
    assert load_manifest(run(JudgeStage(config), progress=False)) == manifest


def test_new_gold_in_the_store_means_new_judgements(world):
    config = JudgeConfig(pairs=attributed(world), panel=world["panel"], store=world["store"],
                         embed_max_chars=MAX_CHARS, out=str(world["root"] / "jx"))  # fmt: skip
    before = JudgeStage(config).config_hash
    with VectorStore(world["store"]) as vs:  # rewriting one gold row is a new gold version
        vs.upsert("gold", vs.fetch("gold", world["gold_ids"][:1]))
        vs.flush()
    assert JudgeStage(config).config_hash != before


def test_a_candidate_outside_the_store_is_embedded_and_a_store_without_gold_is_zero_shot(
    world, tmp_path
):
    table = three_pairs(world, ["new pair one", "new pair two"])  # new ids: not in the store
    pairs = write_stage(table, str(tmp_path / "new"))
    config = JudgeConfig(pairs=pairs, panel=world["panel"], store=world["store"],
                         embed_max_chars=MAX_CHARS, out=str(tmp_path / "judged"))  # fmt: skip
    run(JudgeStage(config), progress=False)
    assert all(len(r["few_shot_ids"]) == 8 for r in rows_of(config.out))

    zero = config.model_copy(update={"store": None, "out": str(tmp_path / "zero")})
    manifest = load_manifest(run(JudgeStage(zero), progress=False))
    assert manifest.counts["zero_shot"] == 2
    assert all(r["zero_shot"] and r["few_shot_ids"] == [] for r in rows_of(zero.out))


def test_failed_requests_make_error_outcomes_and_a_position_biased_judge_is_unpermuted(
    world, tmp_path
):
    def always_first(messages: list[dict]) -> str | int:
        return 400 if "broken" in messages[0]["content"] else "Final answer: Candidate 1"

    pairs = write_stage(three_pairs(world, ["ok one", "broken", "ok two"]), str(tmp_path / "p"))
    with FaultServer(answer=always_first) as server:
        endpoint = EndpointConfig(name="first", base_url=server.base_url, model="judge-test")
        panel = JudgePanel(endpoints=[endpoint], samples=5, cache_dir=str(tmp_path / "c"))
        config = JudgeConfig(pairs=pairs, panel=panel, store=None, out=str(tmp_path / "j"))
        manifest = load_manifest(run(JudgeStage(config), progress=False))
    out = rows_of(config.out)
    assert [r["outcome"] == "error" for r in out] == [False, True, False]
    assert "http_400" in out[1]["reason"] and manifest.counts["error"] == 1
    for row in (out[0], out[2]):  # Candidate 1 every time: the side is whatever was shown first
        assert [v["side"] for v in row["votes"]] == [v["permutation"][0] for v in row["votes"]]
    assert sum(manifest.counts[o] for o in ("agree", "disagree", "undecided", "error")) == 3


def test_an_endpoint_down_at_start_fails_naming_its_url(world, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    panel = JudgePanel(endpoints=[EndpointConfig(name="down", base_url=url, model="m")])
    config = JudgeConfig(pairs=attributed(world), panel=panel, store=None, out=str(tmp_path / "j"))
    with pytest.raises(EndpointDownError, match=url.replace(".", r"\.")):
        run(JudgeStage(config), progress=False)


def test_a_stage_that_is_not_pairs_is_refused(world, hh_embedded, tmp_path):
    embeddings = hh_embedded[1]
    config = JudgeConfig(pairs=embeddings, panel=world["panel"], store=None, out=str(tmp_path))
    with pytest.raises(StageError, match="not a pairs stage"):
        JudgeStage(config)


def test_retrieval_config_few_shot_m_is_honoured(world, tmp_path):
    config = JudgeConfig(pairs=attributed(world), panel=world["panel"], store=world["store"],
                         few_shot=RetrievalConfig(few_shot=3), embed_max_chars=MAX_CHARS,
                         out=str(tmp_path / "j"))  # fmt: skip
    run(JudgeStage(config), progress=False)
    assert {len(r["few_shot_ids"]) for r in rows_of(config.out)} == {3}


def test_the_local_judge_reads_pairs_only_from_its_requests(world, tmp_path):
    """The judge server, in its own audited process, judges the candidates over HTTP; it never
    opens a stage file and never imports a Parquet or LanceDB reader."""
    import subprocess
    import sys
    import time

    import httpx

    log, port = tmp_path / "opened.json", free_port()
    model = world["panel"].local_models["best"]
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.annotate.audited_judge", str(log), f"best={model}", str(port)]
    )
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/models", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                assert server.poll() is None and time.monotonic() < deadline, "no judge server"
                time.sleep(0.2)
        endpoint = EndpointConfig(name="best", base_url=url, model="best")
        panel = JudgePanel(endpoints=[endpoint], samples=2, cache_dir=str(tmp_path / "cache"))
        config = JudgeConfig(pairs=attributed(world), panel=panel, store=world["store"],
                             embed_max_chars=MAX_CHARS, out=str(tmp_path / "j"))  # fmt: skip
        manifest = load_manifest(run(JudgeStage(config), progress=False))
        assert manifest.counts["error"] == 0 and manifest.counts["requests_sent"] == 2 * CANDIDATES
    finally:
        server.terminate()
        server.wait(timeout=30)
    audit = json.loads(log.read_text())
    assert any(path.startswith(model) for path in audit["opened"])  # the hook does see opens
    stored = (str(world["root"]), str(tmp_path / "j"))
    assert not [p for p in audit["opened"] if p.startswith(stored) and not p.startswith(model)]
    assert audit["readers"] == []
