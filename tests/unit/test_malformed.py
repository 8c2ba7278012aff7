"""A corpus with every defect kind: each row ends in exactly one outcome, with a reason."""

from __future__ import annotations

import json

import polars as pl
import pytest

from synpref_core.config import DecontamConfig, IngestConfig, SourceSpec, ValidationConfig
from synpref_core.ingest.pipeline import NormalizeStage, ingest_counts, run_ingest
from synpref_core.ingest.readers import MalformedInputError

BENCH_PROMPT = (
    "explain in detail how the quick brown fox jumps over the lazy dog "
    "while the farmer sleeps soundly in the old red barn"
)


def _line(prompt, chosen, rejected) -> bytes:
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}).encode()


# (line bytes, expected outcome) in file order; line numbers are 1-based positions.
CORPUS: list[tuple[bytes, str]] = [
    (_line("What is 2+2?", "4", "5"), "kept"),
    (b'{"prompt": "no rejected here", "chosen": "yes"}', "missing_field"),
    (_line("Say hi", "", "hello"), "empty_side"),
    (_line("Say hi", "hello", "   "), "empty_side"),
    (_line("Say hi", "same answer", "same answer "), "identical_sides"),
    (b'{"prompt": "count", "chosen": 3, "rejected": "four"}', "wrong_type"),
    (b'{"prompt": "bad bytes \xff\xfe", "chosen": "a", "rejected": "b"}', "undecodable_text"),
    (b'{"prompt": "lone \\ud800 surrogate", "chosen": "a", "rejected": "b"}', "undecodable_text"),
    (_line("Write a long essay", "x" * 600, "short"), "oversize_field"),
    (_line("", "a", "b"), "empty_prompt"),
    (b"", "blank"),  # blank lines are not rows
    (_line("What is 2+2?", "4", "5"), "duplicate"),
    (_line(f"Please {BENCH_PROMPT.upper()} now", "ok", "no"), "contaminated"),
    # 12 shared words only: not contaminated
    (_line(" ".join(BENCH_PROMPT.split()[:12]) + " and more", "ok", "no"), "kept"),
    (b'["not", "an", "object"]', "wrong_type"),
    (_line("Tell me a joke", "A pun.", "No."), "kept"),
]


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in CORPUS) + b"\n")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(_line(BENCH_PROMPT, "a", "b").decode() + "\n")
    return path, bench


def _config(path, bench, out) -> IngestConfig:
    return IngestConfig(
        sources=[SourceSpec(format="pairs", paths=[str(path)])],
        out=str(out),
        decontamination=DecontamConfig(benchmarks=[SourceSpec(format="pairs", paths=[str(bench)])]),
        validation=ValidationConfig(max_field_chars=500),
    )


def test_every_row_accounted_for_with_its_reason(corpus, tmp_path):
    path, bench = corpus
    out = tmp_path / "out"
    run_ingest(_config(path, bench, out), progress=False)
    counts = ingest_counts(str(out))
    rows = [outcome for _, outcome in CORPUS if outcome != "blank"]
    assert counts["input_rows"] == len(rows)
    assert counts["rows"] == rows.count("kept")
    assert counts["duplicates"] == 1 and counts["contaminated"] == 1
    assert counts["quarantined"] == len(rows) - rows.count("kept") - 2
    assert counts["input_rows"] == (
        counts["rows"] + counts["quarantined"] + counts["duplicates"] + counts["contaminated"]
    )
    kept = pl.read_parquet(out / "data" / "*.parquet")
    rejects = pl.concat(
        [
            pl.read_parquet(out / "_stages/normalize/rejects/*.parquet"),
            pl.read_parquet(out / "rejects" / "*.parquet"),
        ]
    )
    outcome_by_line = {r: "kept" for r in kept["source_row"].to_list()}
    for row in rejects.iter_rows(named=True):
        assert row["source_row"] not in outcome_by_line, "a row has two outcomes"
        assert row["reason"], "every reject has a reason"
        outcome_by_line[row["source_row"]] = row["reason_code"]
    expected = {i: outcome for i, (_, outcome) in enumerate(CORPUS) if outcome != "blank"}
    assert outcome_by_line == expected
    # quarantined rows keep their input, so nothing is lost
    undecodable = rejects.filter(pl.col("reason_code") == "undecodable_text")
    assert all(undecodable["raw"].str.contains("bad bytes|surrogate"))
    dup = rejects.filter(pl.col("reason_code") == "duplicate").row(0, named=True)
    assert dup["duplicate_of"].endswith(":0")  # points at the first occurrence, line 1


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(_line("a", "b", "c").decode() + "\n" + '{"prompt": "x", \n')
    with pytest.raises(MalformedInputError, match=r"broken\.jsonl:2: invalid JSON"):
        run_ingest(_config(path, path, tmp_path / "o"), progress=False)


def test_wrong_top_level_type_names_file(tmp_path):
    path = tmp_path / "llmbar.json"
    path.write_text('{"input": "not an array"}')
    config = IngestConfig(
        sources=[SourceSpec(format="llmbar", paths=[str(path)])], out=str(tmp_path / "o")
    )
    with pytest.raises(MalformedInputError, match=r"llmbar\.json:1: expected a JSON array"):
        run_ingest(config, progress=False)


def test_missing_input_file_is_a_clear_error(tmp_path):
    config = IngestConfig(
        sources=[SourceSpec(format="pairs", paths=[str(tmp_path / "nope")])],
        out=str(tmp_path / "o"),
    )
    with pytest.raises(MalformedInputError, match="no such file"):
        run_ingest(config, progress=False)


def test_stage_run_without_plan_still_decontaminates(tmp_path, corpus):
    """A stage built where its shards run (a Ray worker, a direct call) never ran plan():
    run_shard reads the benchmark n-grams itself instead of skipping decontamination."""
    path, bench = corpus
    config = _config(path, bench, tmp_path / "out")
    spec = NormalizeStage(config).plan()[0]  # the specs come from a stage elsewhere

    result = NormalizeStage(config).run_shard(0, spec)

    assert result["counts"]["contaminated"] == 1
    rejects = pl.read_parquet(tmp_path / "out" / "_stages" / "normalize" / "rejects")
    (row,) = rejects.filter(pl.col("reason_code") == "contaminated").to_dicts()
    assert row["source_row"] == [outcome for _, outcome in CORPUS].index("contaminated")


def test_byte_ranges_name_true_lines_in_rejects_and_errors(tmp_path):
    """Rows of a later byte range are numbered by its worker from the range start; the final
    rejects and a broken line's error still name the line in the whole file."""
    lines = [_line(f"question {i}", f"answer {i}", f"other {i}") for i in range(4000)]
    lines[3100] = _line("Say hi", "", "hello")
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    config = IngestConfig(
        sources=[SourceSpec(format="pairs", paths=[str(path)])],
        out=str(tmp_path / "out"),
        shard_bytes=2**16,
    )
    run_ingest(config, progress=False)
    assert len(NormalizeStage(config).plan()) > 2
    rejects = pl.read_parquet(sorted((tmp_path / "out").glob("rejects/*.parquet")))
    assert rejects["source_row"].to_list() == [3100]
    kept = pl.read_parquet(sorted((tmp_path / "out").glob("data/*.parquet")))
    assert kept["source_row"].to_list() == [i for i in range(4000) if i != 3100]

    lines[3500] = b'{"prompt": "x", '
    path.write_bytes(b"\n".join(lines) + b"\n")
    broken = config.model_copy(update={"out": str(tmp_path / "broken")})
    with pytest.raises(MalformedInputError, match=r"big\.jsonl:3501: invalid JSON"):
        run_ingest(broken, progress=False)
