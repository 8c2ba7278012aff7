"""The columnar fast path for plain-string `pairs` JSONL writes exactly what the row path writes.

The same lines go to two files; the second ends with a blank line, which the fast path declines
(it numbers rows by line), so that file takes the row path. Every output column but the file name
must match, and the fast path must actually have been taken for the first file.
"""

from __future__ import annotations

import json

import polars as pl

from synpref_core import schema
from synpref_core.config import DecontamConfig, IngestConfig, SourceSpec, ValidationConfig
from synpref_core.curation.validate import validate_draft
from synpref_core.ingest import columnar, rows
from synpref_core.ingest.pipeline import NormalizeStage, run_ingest
from synpref_core.ingest.readers import RowError, newline_offsets, read_range
from tests.ingest_helpers import read_dir

BENCH = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
ROWS = [
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},  # duplicate
    {"prompt": "Say hi", "chosen": "", "rejected": "hello"},
    {"prompt": "Say hi", "chosen": "same", "rejected": " same "},
    {"prompt": "   ", "chosen": "a", "rejected": "b"},
    {"prompt": "long", "chosen": "x" * 300, "rejected": "y"},
    {"prompt": f"Q: {BENCH.upper()}?", "chosen": "ok", "rejected": "no"},
    {"prompt": 'émoji 🙂 "quotes" \\ back\nslash\ttab', "chosen": "ü", "rejected": "ß"},
    {"prompt": "extra fields", "chosen": "a", "rejected": "b", "score": 3, "meta": {"k": 1}},
]


def _run(tmp_path, name: str, lines: list[str]):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"prompt": BENCH, "chosen": "a", "rejected": "b"}) + "\n")
    config = IngestConfig(
        sources=[SourceSpec(format="pairs", paths=[str(path)])],
        decontamination=DecontamConfig(benchmarks=[SourceSpec(format="pairs", paths=[str(bench)])]),
        validation=ValidationConfig(max_field_chars=200),
        out=str(tmp_path / name),
        batch_rows=4,
    )
    run_ingest(config, progress=False)
    return config, path


def _fast_path_taken(config: IngestConfig) -> bool:
    stage = NormalizeStage(config)
    spec = stage.plan()[0]
    data = read_range(spec)
    batches = columnar.pairs_batches(
        data,
        newline_offsets(data),
        spec["path"],
        config.sources[0],
        stage.run_id,
        config.validation.max_field_chars,
        config.batch_rows,
    )
    return batches is not None


def _read(out, pattern: str) -> pl.DataFrame:
    return read_dir(out, pattern).drop("source_file", "run_id")


def test_fast_path_equals_row_path(tmp_path):
    lines = [json.dumps(r, ensure_ascii=False) for r in ROWS]
    fast_config, _ = _run(tmp_path, "fast", lines)
    row_config, _ = _run(tmp_path, "rows", [*lines, ""])

    assert _fast_path_taken(fast_config)
    assert not _fast_path_taken(row_config)

    fast, rows = tmp_path / "fast", tmp_path / "rows"
    for pattern in (
        "_stages/normalize/data/*",
        "_stages/normalize/rejects/*",
        "data/*",
        "rejects/*",
    ):
        a, b = _read(fast, pattern), _read(rows, pattern)
        if pattern == "rejects/*":  # duplicates name the file of the kept row
            a, b = a.drop("duplicate_of", "reason"), b.drop("duplicate_of", "reason")
            assert a["reason_code"].to_list() == ["duplicate"]
        assert a.equals(b), pattern
    codes = _read(fast, "_stages/normalize/rejects/*")["reason_code"].to_list()
    assert sorted(codes) == sorted(
        ["empty_side", "identical_sides", "empty_prompt", "oversize_field", "contaminated"]
    )


def test_non_string_values_take_the_row_path_and_are_quarantined(tmp_path):
    lines = [json.dumps(r) for r in ROWS[:1]] + [
        json.dumps({"prompt": "n", "chosen": 3, "rejected": "b"}),
        json.dumps({"prompt": "b", "chosen": True, "rejected": "b"}),
        json.dumps({"prompt": [{"role": "user", "content": "m"}], "chosen": "a", "rejected": "b"}),
    ]
    config, _ = _run(tmp_path, "mixed", lines)
    assert not _fast_path_taken(config)
    rejects = _read(tmp_path / "mixed", "_stages/normalize/rejects/*")
    assert rejects["reason_code"].to_list() == ["wrong_type", "wrong_type"]
    assert _read(tmp_path / "mixed", "data/*").height == 2


def test_one_turn_check_and_id_are_the_validator_and_schema_ones():
    """rows' single-user-turn helpers, used by the fast path, say what validate_draft and
    schema.pair_id say of the same pair: reason code, reason text and id."""
    cases = [
        ("p", "a", "b"),
        ("  ", "a", "b"),
        ("p", " ", "b"),
        ("p", "a", "\t"),
        ("p", "same", " same "),
        ("x" * 9, "a", "b"),
        ("p", "y" * 9, "z" * 9),
        ("é 🙂", "ü", "ß"),
    ]
    for prompt, chosen, rejected in cases:
        draft = {"conversation": [{"role": "user", "content": prompt}], "chosen": chosen}
        draft["rejected"] = rejected
        try:
            validate_draft(draft, 8)
            expected = None
        except RowError as err:
            expected = (err.code, err.reason)
        got = rows.user_pair_error(prompt, chosen, rejected, 8)
        assert (None if got is None else (got.code, got.reason)) == expected, (prompt, chosen)
        assert rows.user_pair_id(prompt, chosen, rejected) == schema.pair_id(
            draft["conversation"], chosen, rejected
        )
