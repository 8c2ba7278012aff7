"""Stage 2's noise-injection audit: the seeded injection over real pairs (every row accounted for,
ids and links right, the same pairs whatever the shard layout), the audit's metrics on hand-made
Stage 2 outcomes with known answers, and the join through a real consistency stage."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from synpref_core.annotate.stages import JUDGED_SCHEMA
from synpref_core.curation.audit import (
    InjectNoiseConfig,
    InjectNoiseStage,
    audit_table,
    noise_position,
)
from synpref_core.curation.consistency import ConsistencyConfig, ConsistencyStage
from synpref_core.curation.select import split_position
from synpref_core.executors import run
from synpref_core.rm.scoring import SCORE_SCHEMA
from synpref_core.schema import pair_id
from synpref_core.stages import StageError, load_manifest, read_stage
from tests.stage_helpers import write_stage
from tests.unit.test_consistency import judged_table, pairs_table, scores_table


def _inject(pairs: str, out, fraction: float = 0.3, seed: int = 0) -> pa.Table:
    config = InjectNoiseConfig(pairs=pairs, fraction=fraction, seed=seed, out=str(out))
    return read_stage(run(InjectNoiseStage(config), progress=False))


def test_injection_flips_a_seeded_share_and_accounts_for_every_row(pairs_dir, tmp_path):
    clean = read_stage(pairs_dir)
    noisy = _inject(pairs_dir, tmp_path / "noisy")
    counts = load_manifest(str(tmp_path / "noisy")).counts
    flipped = noise_position(clean["pair_id"].to_pylist(), 0) < 0.3
    assert counts["injected"] == int(flipped.sum()) == 64  # of 225 pairs, for seed 0
    assert counts["injected"] + counts["clean"] == counts["rows"] == clean.num_rows == 225
    for before, after, hit in zip(clean.to_pylist(), noisy.to_pylist(), flipped, strict=True):
        if not hit:
            assert after == before
            continue
        assert (after["chosen"], after["rejected"]) == (before["rejected"], before["chosen"])
        assert after["pair_id"] == pair_id(before["conversation"], before["rejected"],
                                           before["chosen"])  # fmt: skip
        assert after["parent_id"] == before["pair_id"]
        meta = json.loads(after["meta"])
        assert meta.pop("injected") is True
        assert meta == json.loads(before["meta"] or "{}")  # the source's meta kept
        assert after["status"] == before["status"] and after["source"] == before["source"]
    assert len(set(noisy["pair_id"].to_pylist())) == noisy.num_rows


def test_injection_is_the_same_for_a_seed_and_any_shard_layout(pairs_dir, tmp_path):
    first = _inject(pairs_dir, tmp_path / "a")
    one_shard = write_stage(read_stage(pairs_dir), str(tmp_path / "one"))
    again = _inject(one_shard, tmp_path / "b")
    assert len(load_manifest(pairs_dir).entries()) > 1 == len(load_manifest(one_shard).entries())
    assert sorted(first["pair_id"].to_pylist()) == sorted(again["pair_id"].to_pylist())
    other = _inject(pairs_dir, tmp_path / "c", seed=1)
    assert set(other["pair_id"].to_pylist()) != set(first["pair_id"].to_pylist())


def test_injection_is_independent_of_a_hash_split_with_the_same_seed():
    ids = [f"pair-{i}" for i in range(2000)]
    in_split = split_position(pa.array(ids), 0) < 0.3
    injected = noise_position(ids, 0) < 0.2
    # within a split (0, 0.3) the injected share stays near 20%, not 67%
    assert 0.15 < injected[in_split].mean() < 0.25


def test_human_votes_follow_the_swap(tmp_path):
    table = pairs_table(40)
    evidence = [{"human_votes": [1, 1, -1], "judge_votes": None, "p_best": None,
                 "p_gold": None, "note": None}] * 40  # fmt: skip
    table = table.set_column(
        table.schema.get_field_index("evidence"),
        "evidence",
        pa.array(evidence, table.schema.field("evidence").type),
    )
    noisy = _inject(write_stage(table, str(tmp_path / "wild")), tmp_path / "noisy", 0.5)
    votes = {r["parent_id"] is not None: r["evidence"]["human_votes"] for r in noisy.to_pylist()}
    assert votes == {False: [1, 1, -1], True: [0, 0, -1]}


# Hand-made Stage 2 outcomes: (injected, status) per pair.
OUTCOMES = [(False, "kept")] * 4 + [(False, "flipped"), (False, "discarded")]
OUTCOMES += [(True, "kept"), (True, "flipped"), (True, "flipped"), (True, "discarded")]


def outcome_tables(outcomes: list[tuple[bool, str]]) -> tuple[pa.Table, pa.Table]:
    noisy = {"pair_id": [], "meta": []}
    curated = {"pair_id": [], "parent_id": [], "status": []}
    for i, (injected, status) in enumerate(outcomes):
        noisy["pair_id"].append(f"n{i}")
        noisy["meta"].append('{"injected": true}' if injected else None)
        curated["pair_id"].append(f"f{i}" if status == "flipped" else f"n{i}")
        curated["parent_id"].append(f"n{i}" if status == "flipped" else None)
        curated["status"].append(status)
    return pa.table(noisy), pa.table(curated).take(list(reversed(range(len(outcomes)))))


def test_audit_metrics_on_known_outcomes():
    result = audit_table(*outcome_tables(OUTCOMES))
    expected = {
        "kept_correct": (4 / 5, 5),
        "flipped_correct": (2 / 3, 3),
        "curated_correct": (6 / 8, 8),
        "injected_caught": (3 / 4, 4),
        "clean_lost": (2 / 6, 6),
    }
    assert {k: (m["share"], m["pairs"]) for k, m in result.metrics.items()} == expected
    for m in result.metrics.values():
        assert 0.0 <= m["ci_low"] <= m["share"] <= m["ci_high"] <= 1.0
    # content-blind: 6 clean, 4 injected; 5 kept, 3 flipped, 2 discarded
    blind = {k: m["blind"] for k, m in result.metrics.items()}
    assert blind == pytest.approx({"kept_correct": 0.6, "flipped_correct": 0.4,
                                   "curated_correct": (5 * 0.6 + 3 * 0.4) / 8,
                                   "injected_caught": 0.5, "clean_lost": 0.5})  # fmt: skip
    assert result.counts == {
        "clean.kept": 4, "clean.flipped": 1, "clean.discarded": 1,
        "injected.kept": 1, "injected.flipped": 2, "injected.discarded": 1,
    }  # fmt: skip
    assert audit_table(*outcome_tables(OUTCOMES)) == result  # seeded bootstrap
    flat = result.flat()
    assert flat["audit.kept_correct"] == pytest.approx(0.8)
    assert flat["audit.injected.flipped"] == 2.0 and "audit.clean_lost_ci_high" in flat
    rows = {r["metric"]: r for r in result.rows()}
    assert rows["kept_correct"]["paper_human_audit"] == 0.86
    assert rows["clean_lost"]["paper_human_audit"] is None


def test_an_empty_share_has_no_value_and_a_certain_one_a_zero_width_interval():
    result = audit_table(*outcome_tables([(False, "kept")] * 3 + [(True, "discarded")]))
    assert result.metrics["flipped_correct"] == {
        "share": None, "ci_low": None, "ci_high": None, "pairs": 0, "blind": None,
    }  # fmt: skip
    assert result.metrics["kept_correct"]["share"] == result.metrics["kept_correct"]["ci_low"] == 1
    assert "audit.flipped_correct" not in result.flat()


def test_curated_rows_that_do_not_match_the_noisy_pairs_are_refused_in_one_line():
    noisy, curated = outcome_tables(OUTCOMES)
    for bad in (curated.slice(1), pa.concat_tables([curated, curated.slice(0, 1)])):
        with pytest.raises(StageError) as info:
            audit_table(noisy, bad)
        assert "\n" not in str(info.value)


def test_a_flip_back_through_a_real_consistency_stage_restores_the_clean_pair(tmp_path):
    """Oracle RMs and judges (both RMs back clean pairs, doubt injected ones; the judges
    disagree with injected ones): every injected pair is flipped back, every clean one kept."""
    clean = pairs_table(30)
    noisy_dir = str(tmp_path / "noisy")
    noisy = _inject(write_stage(clean, str(tmp_path / "wild")), noisy_dir, 0.4)
    ids = noisy["pair_id"].to_pylist()
    injected = np.array([p is not None for p in noisy["parent_id"].to_pylist()])
    p = np.where(injected, 0.1, 0.9).tolist()
    stages = {
        role: write_stage(scores_table(ids, p), str(tmp_path / role), SCORE_SCHEMA)
        for role in ("best", "gold")
    }
    judged = {i: "disagree" for i, hit in zip(ids, injected, strict=True) if hit}
    judged_dir = write_stage(judged_table(judged), str(tmp_path / "judged"), JUDGED_SCHEMA)
    config = ConsistencyConfig(
        pairs=noisy_dir, best_scores=stages["best"], gold_scores=stages["gold"],
        judged=judged_dir, out=str(tmp_path / "curated"),
    )  # fmt: skip
    curated = read_stage(run(ConsistencyStage(config), progress=False))
    assert sorted(curated["pair_id"].to_pylist()) == sorted(clean["pair_id"].to_pylist())
    result = audit_table(noisy, curated)
    assert 0 < result.counts["injected.flipped"] == injected.sum() < 30
    shares = {k: m["share"] for k, m in result.metrics.items()}
    assert shares == {"kept_correct": 1, "flipped_correct": 1, "curated_correct": 1,
                      "injected_caught": 1, "clean_lost": 0}  # fmt: skip
