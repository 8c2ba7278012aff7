"""The real ingest pipeline over the format fixtures and over the real datasets in ``data/``.

Expected values for the real datasets come from /work/shared/data/README.md and from small
independent counts over the raw files, never from the adapters themselves.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synpref_core import schema
from synpref_core.config import ExecutorConfig, FieldMap, IngestConfig, SourceSpec
from synpref_core.ingest.pipeline import ingest_counts, run_ingest
from synpref_core.ingest.readers import MalformedInputError
from synpref_core.stages import load_manifest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "formats"
DATA = REPO / "data"


def ingest(tmp_path: Path, *sources: SourceSpec) -> tuple[dict[str, int], pa.Table, pa.Table]:
    """Run both ingest stages; return (counts, output pairs, every reject)."""
    out = tmp_path / "out"
    config = IngestConfig(sources=list(sources), out=str(out))
    manifest_uri = run_ingest(config, ExecutorConfig(kind="local"), progress=False)
    assert manifest_uri == str(out / "manifest.json")
    counts = ingest_counts(str(out))
    data_files = sorted((out / "data").glob("*.parquet"))
    assert data_files, "the ingest wrote no data files"
    data = pa.concat_tables([pq.read_table(f) for f in data_files])
    assert data.schema.remove_metadata() == schema.PAIR_SCHEMA
    rejects_files = load_manifest(str(out)).paths("rejects")
    rejects = pa.concat_tables([pq.read_table(f) for f in rejects_files])
    assert counts["rows"] == data.num_rows
    assert counts["quarantined"] + counts["duplicates"] + counts["contaminated"] == (
        rejects.num_rows
    )
    assert counts["input_rows"] == (
        counts["rows"] + counts["quarantined"] + counts["duplicates"] + counts["contaminated"]
    )
    return counts, data, rejects


def source(fmt: str, *names: str, **kwargs) -> SourceSpec:
    return SourceSpec(format=fmt, paths=[str(FIXTURES / n) for n in names], **kwargs)


def meta(row: dict) -> dict:
    return json.loads(row["meta"])


# -- fixtures -----------------------------------------------------------------------------------


def test_rm_bench_fixture(tmp_path):
    counts, data, _ = ingest(tmp_path, source("rm-bench", "rm-bench.json"))
    assert counts["input_records"] == 2
    assert counts["input_rows"] == counts["rows"] == 18
    rows = data.to_pylist()
    assert Counter(r["group_id"] for r in rows) == {"rm-bench:101": 9, "rm-bench:102": 9}
    assert Counter(r["source_subset"] for r in rows) == {"chat": 9, "math": 9}
    assert {r["source_row"] for r in rows if r["group_id"] == "rm-bench:102"} == {1}
    items = json.loads((FIXTURES / "rm-bench.json").read_text())
    for r in rows:
        item = items[r["source_row"]]
        m = meta(r)
        assert m["id"] == item["id"]
        assert r["chosen"] == item["chosen"][m["chosen_style"]]
        assert r["rejected"] == item["rejected"][m["rejected_style"]]
        assert r["conversation"] == [{"role": "user", "content": item["prompt"]}]
        assert r["status"] == "unverified"
        assert r["decided_by"] == "source"
        assert r["source"] == "rm-bench"
    cells = {(meta(r)["chosen_style"], meta(r)["rejected_style"]) for r in rows}
    assert cells == {(i, j) for i in range(3) for j in range(3)}


def test_rmb_fixtures(tmp_path):
    counts, data, _ = ingest(tmp_path, source("rmb", "rmb-pairwise.json", "rmb-bon.json"))
    assert counts["input_records"] == 4
    assert counts["rows"] == 2 + 3 + 1
    rows = data.to_pylist()
    pairwise = [r for r in rows if r["source_file"].endswith("rmb-pairwise.json")]
    bon = [r for r in rows if r["source_file"].endswith("rmb-bon.json")]
    assert [r["group_id"] for r in pairwise] == [None, None]
    assert [meta(r)["pair_uid"] for r in pairwise] == ["rmb-pair-0001", "rmb-pair-0002"]
    assert pairwise[0]["chosen"] == "def reverse(s):\n    return s[::-1]"
    assert pairwise[0]["source_subset"] == "Pairwise_set/Helpfulness/Code/Code Generation"
    # the "language" key of RMB messages is dropped; multi-turn history is kept
    assert pairwise[1]["conversation"] == [
        {"role": "user", "content": "I want to plant tomatoes this year."},
        {
            "role": "assistant",
            "content": "Great idea! Do you have a garden bed or will you use pots?",
        },
        {"role": "user", "content": "Pots on a balcony. When should I start?"},
    ]
    assert Counter(r["group_id"] for r in bon) == {
        "rmb-bon:rmb-bon-0001": 3,
        "rmb-bon:rmb-bon-0002": 1,
    }
    first = [r for r in bon if r["group_id"] == "rmb-bon:rmb-bon-0001"]
    assert {r["chosen"] for r in first} == {"1. Rise & Shine\n2. The Crumb Corner\n3. Golden Crust"}
    assert [meta(r)["rejected_model"] for r in first] == ["model-b", "model-c", "model-d"]
    assert [meta(r)["loser"] for r in first] == [0, 1, 2]


def test_judgebench_fixture(tmp_path):
    counts, data, _ = ingest(tmp_path, source("judgebench", "judgebench.jsonl"))
    assert counts["rows"] == counts["input_rows"] == 3
    rows = sorted(data.to_pylist(), key=lambda r: r["source_row"])
    lines = [json.loads(x) for x in (FIXTURES / "judgebench.jsonl").read_text().splitlines()]
    assert [r["source_row"] for r in rows] == [0, 1, 2]
    for r, line in zip(rows, lines, strict=True):
        assert r["source_subset"] == line["source"]
        better, worse = (
            ("response_A", "response_B") if line["label"] == "A>B" else ("response_B", "response_A")
        )
        assert (r["chosen"], r["rejected"]) == (line[better], line[worse])
        assert meta(r)["pair_id"] == line["pair_id"]
    assert [r["source_subset"] for r in rows] == [
        "mmlu-pro-math",
        "livebench-reasoning",
        "livecodebench",
    ]
    assert rows[1]["chosen"].startswith("Carol is the shortest")


def test_rewardbench_fixture(tmp_path):
    counts, data, _ = ingest(tmp_path, source("rewardbench", "rewardbench.jsonl", name="rb1"))
    assert counts["rows"] == 3
    rows = sorted(data.to_pylist(), key=lambda r: r["source_row"])
    assert [r["source_subset"] for r in rows] == [
        "alpacaeval-easy",
        "math-prm",
        "refusals-dangerous",
    ]
    assert {r["source"] for r in rows} == {"rb1"}
    assert [meta(r)["id"] for r in rows] == [30, 412, 2051]
    assert rows[1]["rejected"] == "Subtract 3 to get 2x = 8, then divide by 2: x = 16."


def test_pairs_fixtures_agree_across_layouts(tmp_path):
    """The same three pairs as TRL messages, OpenRLHF conversations and Parquet: same ids."""
    ids = {}
    for name, spec in {
        "messages": source("pairs", "pairs-messages.jsonl"),
        "openrlhf": source("pairs", "pairs-openrlhf.jsonl", fields=FieldMap(prompt=None)),
        "parquet": source("pairs", "pairs.parquet"),
    }.items():
        counts, data, _ = ingest(tmp_path / name, spec)
        assert counts["rows"] == counts["input_rows"] == 3, name
        rows = sorted(data.to_pylist(), key=lambda r: r["source_row"])
        ids[name] = [r["pair_id"] for r in rows]
        assert rows[1]["conversation"] == [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Name a prime number greater than 10."},
        ], name
        assert (rows[1]["chosen"], rows[1]["rejected"]) == ("11.", "12."), name
        assert [m["role"] for m in rows[2]["conversation"]] == ["user", "assistant", "user"]
    assert ids["messages"] == ids["openrlhf"] == ids["parquet"]
    assert len(set(ids["messages"])) == 3


def test_pairs_strings_fixture(tmp_path):
    counts, data, _ = ingest(tmp_path, source("pairs", "pairs-strings.jsonl"))
    assert counts["rows"] == 3
    rows = sorted(data.to_pylist(), key=lambda r: r["source_row"])
    assert rows[1]["conversation"] == [
        {"role": "user", "content": "Translate 'good morning' into French."}
    ]
    assert (rows[1]["chosen"], rows[1]["rejected"]) == ("Bonjour.", "Bonne nuit.")
    # the first pair is also the first pair of pairs-messages.jsonl
    messages = json.loads((FIXTURES / "pairs-messages.jsonl").read_text().splitlines()[0])
    assert rows[0]["pair_id"] == schema.pair_id(
        messages["prompt"], messages["chosen"][0]["content"], messages["rejected"][0]["content"]
    )


def test_bad_rows_and_duplicates_are_accounted(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        {"prompt": "Q1", "chosen": "good", "rejected": "bad"},
        {"prompt": "Q1", "chosen": "good", "rejected": "bad"},  # duplicate of line 1
        {"prompt": "Q2", "chosen": "same", "rejected": "same"},
        {"prompt": "Q3", "chosen": "  ", "rejected": "bad"},
        {"prompt": "", "chosen": "good", "rejected": "bad"},
        {"prompt": "Q4", "chosen": "good"},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    counts, data, rejects = ingest(tmp_path, SourceSpec(format="pairs", paths=[str(path)]))
    assert counts["input_rows"] == 6
    assert counts["rows"] == 1
    assert counts["duplicates"] == 1
    codes = {r["source_row"]: r["reason_code"] for r in rejects.to_pylist()}
    assert codes == {
        1: "duplicate",
        2: "identical_sides",
        3: "empty_side",
        4: "empty_prompt",
        5: "missing_field",
    }
    dup = next(r for r in rejects.to_pylist() if r["reason_code"] == "duplicate")
    assert dup["duplicate_of"] == f"{path}:0"
    assert dup["pair_id"] == data.column("pair_id")[0].as_py()


# -- the real datasets --------------------------------------------------------------------------


def test_real_hh_rlhf_harmless(tmp_path):
    path = DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    assert len(raw) == 2312
    # independent check: the text before the last Assistant turn must match
    mismatched = [
        i
        for i, r in enumerate(raw)
        if r["chosen"].rsplit("\n\nAssistant:", 1)[0]
        != r["rejected"].rsplit("\n\nAssistant:", 1)[0]
    ]
    assert len(mismatched) == 5

    counts, data, rejects = ingest(tmp_path, SourceSpec(format="hh-rlhf", paths=[str(path)]))
    assert counts["input_records"] == counts["input_rows"] == 2312
    assert counts["quarantined.history_mismatch"] == 5
    history = [
        r["source_row"] for r in rejects.to_pylist() if r["reason_code"] == "history_mismatch"
    ]
    assert sorted(history) == mismatched
    assert counts["rows"] > 2250
    assert set(data.column("source").to_pylist()) == {"hh-rlhf"}
    assert all(c[-1]["role"] == "user" for c in data.column("conversation").to_pylist())


def test_real_pandalm(tmp_path):
    path = DATA / "pandalm" / "testset-v1.json"
    items = json.loads(path.read_text(encoding="utf-8"))
    assert len(items) == 999
    votes = [(x["annotator1"], x["annotator2"], x["annotator3"]) for x in items]
    unanimous = Counter(v[0] for v in votes if len(set(v)) == 1)
    assert unanimous == {2: 426, 1: 368, 0: 85}
    # a response wins with at least two of the three votes
    majority = [x for x, v in zip(items, votes, strict=True) if v.count(1) >= 2 or v.count(2) >= 2]
    two_of_three = len(majority) - 426 - 368
    assert two_of_three > 0

    counts, data, _ = ingest(tmp_path, SourceSpec(format="pandalm", paths=[str(path)]))
    assert counts["input_records"] == counts["input_rows"] == 999
    assert counts["quarantined.no_preference"] == 999 - len(majority)
    assert counts["rows"] <= 426 + 368 + two_of_three
    # every majority item is kept, quarantined for its text, or a duplicate
    text_rejects = counts["quarantined"] - counts["quarantined.no_preference"]
    assert counts["rows"] + counts["duplicates"] + text_rejects == len(majority)

    # independent expectation of what survives validation and dedup
    def winner(x):
        v = (x["annotator1"], x["annotator2"], x["annotator3"])
        return "response1" if v.count(1) >= 2 else "response2"

    def valid(x):
        a, b = x["response1"], x["response2"]
        if not (isinstance(a, str) and isinstance(b, str)):
            return False
        return bool(a.strip()) and bool(b.strip()) and a.strip() != b.strip()

    kept = {}
    for x in filter(valid, majority):
        w = winner(x)
        loser = "response2" if w == "response1" else "response1"
        prompt = x["instruction"] + (f"\n\n{x['input']}" if x["input"].strip() else "")
        kept.setdefault((prompt, x[w], x[loser]), x)
    assert counts["rows"] == len(kept)
    assert counts["duplicates"] == sum(map(valid, majority)) - len(kept)

    rows = data.to_pylist()
    controversy = Counter(r["controversiality"]["value"] for r in rows)
    assert set(controversy) == {"low", "medium"}
    assert all(r["controversiality"]["source"] == "source" for r in rows)
    for r in rows:
        hv = r["evidence"]["human_votes"]
        assert len(hv) == 3 and hv.count(1) >= 2
        assert r["controversiality"]["value"] == ("low" if hv == [1, 1, 1] else "medium")
        item = items[r["source_row"]]
        assert r["chosen"] == item[winner(item)]
        assert r["source_subset"] == item["motivation_app"]


def test_real_llmbar(tmp_path):
    root = DATA / "llmbar" / "Dataset"
    files = sorted(root.rglob("dataset.json"))
    expected = {str(f): len(json.loads(f.read_text(encoding="utf-8"))) for f in files}
    subsets = {str(f): f.parent.relative_to(root).as_posix() for f in files}
    assert len(files) == 13
    assert sum(expected.values()) == 1200

    counts, data, rejects = ingest(tmp_path, SourceSpec(format="llmbar", paths=[str(root)]))
    assert counts["input_records"] == counts["input_rows"] == 1200
    # per file, every record ends as exactly one row or reject
    seen = Counter(data.column("source_file").to_pylist())
    seen.update(rejects.column("source_file").to_pylist())
    assert dict(seen) == expected
    pairs = Counter(
        zip(
            data.column("source_file").to_pylist(),
            data.column("source_subset").to_pylist(),
            strict=True,
        )
    )
    assert {file: subset for file, subset in pairs} == subsets
    assert len(set(data.column("source_subset").to_pylist())) == 13
    assert "LLMBar/Adversarial/Neighbor" in subsets.values()
    assert "Processed/MT-Bench" in subsets.values()


def test_real_offsetbias(tmp_path):
    path = DATA / "offsetbias" / "evalbiasbench" / "biasbench.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    per_bias = {k: len(v) for k, v in doc.items()}
    assert sum(per_bias.values()) == 80 and len(per_bias) == 6

    counts, data, _ = ingest(tmp_path, SourceSpec(format="offsetbias", paths=[str(path)]))
    assert counts["input_records"] == counts["input_rows"] == 80
    kept = Counter(data.column("source_subset").to_pylist())
    assert counts["rows"] == sum(kept.values())
    assert set(kept) <= set(per_bias)
    assert all(kept[k] <= n for k, n in per_bias.items())
    items = [x for v in doc.values() for x in v]
    for r in data.to_pylist():
        item = items[r["source_row"]]
        better = "response1" if str(item["label"]) == "1" else "response2"
        assert r["chosen"] == item[better]
        assert r["conversation"] == [{"role": "user", "content": item["instruction"]}]


@pytest.mark.parametrize("fmt", ["rm-bench", "rmb"])
def test_wrong_document_type_is_a_malformed_file(tmp_path, fmt):
    path = tmp_path / "doc.json"
    path.write_text('{"not": "an array"}')
    with pytest.raises(MalformedInputError, match=r"doc\.json:1: expected a JSON array"):
        run_ingest(
            IngestConfig(
                sources=[SourceSpec(format=fmt, paths=[str(path)])], out=str(tmp_path / "out")
            ),
            ExecutorConfig(kind="local"),
            progress=False,
        )
