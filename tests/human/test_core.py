"""The pure parts: agreement statistics, the batch slice, order and assignment, deciding an item."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from synpref_core.human.agreement import cohen_kappa, krippendorff_alpha
from synpref_core.human.batches import BatchConfig, assign, plan_batch, selection_reason
from synpref_core.human.verdicts import decide, preferred_of


def test_cohen_kappa_by_hand():
    # p_o = 3/4; p_e = (2*1 + 2*3) / 16 = 1/2; κ = (3/4 - 1/2) / (1/2)
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # chance agreement is 1
    with pytest.raises(ValueError, match="differ in length"):
        cohen_kappa([1], [1, 2])


def test_krippendorff_alpha_matches_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders, 12 units,
    # nominal alpha = 0.743 (None marks a missing value).
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[c[u] for c in coders if c[u] is not None] for u in range(12)]
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)


def test_alpha_equals_kappa_like_agreement_in_the_limits():
    assert krippendorff_alpha([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    assert krippendorff_alpha([["a"], ["b"]]) is None
    assert krippendorff_alpha([["a", "a"], ["a", "a"]]) is None
    assert krippendorff_alpha([["a", "b"], ["b", "a"]]) < 0


def test_mean_kappa_weights_each_annotator_pair_by_its_items():
    from synpref_core.human.progress import mean_kappa

    pairs = {
        (1, 2): (["a", "b", "a", "b"], ["a", "b", "a", "b"]),  # κ = 1 over 4 items
        (1, 3): (["a", "a"], ["a", "b"]),  # κ = 0 over 2 items
        (2, 3): (["a"], ["a"]),
    }  # undefined: left out
    assert mean_kappa(pairs) == pytest.approx(4 / 6)
    assert mean_kappa({}) is None


def _pair(i: int, **attrs: str) -> dict:
    row = {"pair_id": f"p{i:03d}", "evidence": None}
    for name, value in attrs.items():
        row[name] = {"value": value, "source": "llm"}
    return row


def test_the_slice_puts_judge_disagreements_then_high_controversy_first():
    pairs = [_pair(i) for i in range(20)]
    pairs[5]["evidence"] = {"judge_votes": [{"judge": "a", "vote": 1}, {"judge": "b", "vote": 0}]}
    pairs[7] = _pair(7, controversiality="high")
    pairs[9]["evidence"] = {"judge_votes": [{"judge": "a", "vote": 1}]}  # agreement: random
    config = BatchConfig(pairs="x", name="b", size=4, overlap=1, annotators=["a"], seed=0)
    reasons = {p.pair_id: p.reason for p in plan_batch(pairs, config)}
    assert reasons["p005"] == "judge_disagreement" and reasons["p007"] == "high_controversiality"
    assert sorted(reasons.values()).count("random") == 2
    assert selection_reason(pairs[9]) == "random"


def test_protocol_order_objective_and_low_controversy_first():
    pairs = [
        _pair(0, objectivity="subjective", controversiality="low"),
        _pair(1, objectivity="objective", controversiality="high"),
        _pair(2, objectivity="objective", controversiality="low"),
        _pair(3),
    ]
    config = BatchConfig(pairs="x", name="b", size=4, overlap=1, annotators=["a"], seed=1)
    assert [p.pair_id for p in plan_batch(pairs, config)] == ["p002", "p001", "p000", "p003"]


def test_plans_are_seeded_and_assignment_is_balanced_with_distinct_annotators():
    pairs = [_pair(i) for i in range(60)]
    config = BatchConfig(pairs="x", name="b", size=60, overlap=2, annotators=list("abcd"), seed=7)
    first, again = plan_batch(pairs, config), plan_batch(pairs, config)
    assert first == again
    other = plan_batch(pairs, config.model_copy(update={"seed": 8}))
    assert [p.swapped for p in first] != [p.swapped for p in other]
    assert 15 <= sum(p.swapped for p in first) <= 45
    load = {name: sum(name in p.annotators for p in first) for name in "abcd"}
    assert load == dict.fromkeys("abcd", 30)
    assert all(len(set(p.annotators)) == 2 for p in first)
    assert assign(3, ["x", "y", "z"], 3, 0)[0] in {
        ("x", "y", "z"),
        ("y", "z", "x"),
        ("z", "x", "y"),
    }


def test_batch_config_rejects_more_overlap_than_annotators():
    with pytest.raises(ValidationError, match="overlap 3 exceeds the 2 annotators"):
        BatchConfig(pairs="x", name="b", overlap=3, annotators=["a", "b"])


def test_preferred_follows_the_shown_order():
    assert preferred_of("first", swapped=False) == "chosen"
    assert preferred_of("first", swapped=True) == "rejected"
    assert preferred_of("second", swapped=True) == "chosen"
    assert preferred_of("undecidable", swapped=True) == "undecidable"


@pytest.mark.parametrize(
    ("votes", "overlap", "adjudicated", "state", "preferred"),
    [
        (["chosen"], 2, None, "pending", None),
        (["chosen", "chosen"], 2, None, "decided", "chosen"),
        (["chosen", "rejected"], 2, None, "disagreement", None),
        (["chosen", "rejected"], 2, "rejected", "adjudicated", "rejected"),
        (["rejected", "rejected", "chosen"], 3, None, "decided", "rejected"),
        (["undecidable", "undecidable", "chosen"], 3, None, "decided", "undecidable"),
        (["undecidable", "rejected", "chosen"], 3, None, "disagreement", None),
    ],
)
def test_decide(votes, overlap, adjudicated, state, preferred):
    outcome = decide(votes, overlap, adjudicated)
    assert (outcome.state, outcome.preferred) == (state, preferred)
    assert outcome.votes == tuple(votes)


def test_login_limiter_window_and_bounded_memory():
    from synpref_core.human import auth

    now = [0.0]
    limiter = auth.LoginLimiter(failures=2, window_s=60.0, clock=lambda: now[0])
    limiter.failed(["user:a"])
    assert limiter.retry_after(["user:a"]) == 0
    limiter.failed(["user:a"])
    assert limiter.retry_after(["user:a"]) == 61 and limiter.retry_after(["user:b"]) == 0
    now[0] = 60.5
    assert limiter.retry_after(["user:a"]) == 0, "failures age out of the window"
    for i in range(auth.MAX_TRACKED_KEYS + 1):
        limiter.failed([f"user:{i}"])
    now[0] = 200.0
    limiter.failed(["user:late"])
    assert len(limiter._seen) == 1
