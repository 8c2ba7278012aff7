"""Inter-annotator agreement on nominal labels: Cohen's κ for two annotators, Krippendorff's α for
any number (with missing labels), both pure.

    cohen_kappa(["a", "a", "b"], ["a", "b", "b"])
    krippendorff_alpha([["a", "a"], ["b", "a", "b"], ["a"]])   # one list of labels per item

Both return None where the statistic is undefined (no pairable labels, or every label the same
class, where chance agreement is 1).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float | None:
    """κ = (p_o − p_e) / (1 − p_e) over the items both annotators labelled."""
    if len(first) != len(second):
        raise ValueError(f"label lists differ in length: {len(first)} and {len(second)}")
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    count_a, count_b = Counter(first), Counter(second)
    expected = sum(count_a[c] * count_b[c] for c in count_a) / (n * n)
    if expected == 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def krippendorff_alpha(units: Sequence[Sequence[Hashable]]) -> float | None:
    """Nominal α = 1 − (n − 1) Σ_{c≠k} o_ck / Σ_{c≠k} n_c n_k (Krippendorff 2011).

    ``units`` holds each item's labels (missing ones left out); items with fewer than two labels
    cannot be paired and take no part."""
    coincidence: Counter[tuple[Hashable, Hashable]] = Counter()
    for labels in units:
        m = len(labels)
        if m < 2:
            continue
        counts = Counter(labels)
        for c, n_c in counts.items():
            for k, n_k in counts.items():
                pairs = n_c * (n_k - 1) if c == k else n_c * n_k
                coincidence[c, k] += pairs / (m - 1)
    totals: Counter[Hashable] = Counter()
    for (c, _), value in coincidence.items():
        totals[c] += value
    n = sum(totals.values())
    disagree = sum(v for (c, k), v in coincidence.items() if c != k)
    chance = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    if n <= 1 or chance == 0:
        return None
    return 1.0 - (n - 1) * disagree / chance
