"""The vectorised n-gram check agrees with a plain Python reference on real text."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import polars as pl

from synpref_core.curation.decontam import benchmark_ngrams, contaminated_rows
from tests.conftest import DATA


def _grams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_matches_python_reference_on_real_prompts():
    pandalm = json.loads((DATA / "pandalm" / "testset-v1.json").read_text())
    prompts = sorted({f"{r['instruction']}\n\n{r['input']}" for r in pandalm})
    rng = random.Random(7)
    bench = rng.sample(prompts, 40)
    # candidates: untouched prompts, plus benchmark spans of 13 and 12 words inside new text
    candidates = rng.sample(prompts, 150)
    for text in bench[:20]:
        words = re.findall(r"\w+", text)
        if len(words) >= 14:
            candidates.append("Intro. " + " ".join(words[1:14]) + " outro")
            candidates.append("Intro. " + " ".join(words[1:13]) + " outro")
    n = 13
    bench_grams = set().union(*(_grams(t, n) for t in bench))
    expected = [i for i, t in enumerate(candidates) if _grams(t, n) & bench_grams]
    got = contaminated_rows(pl.Series(candidates), benchmark_ngrams(bench, n), n)
    assert got.tolist() == expected
    assert 20 < len(expected) < len(candidates)  # the check is exercised both ways


def test_ngrams_do_not_cross_rows_and_short_texts_are_clean():
    words = [f"w{i}" for i in range(13)]
    bench = benchmark_ngrams([" ".join(words)], 13)
    texts = pl.Series([" ".join(words[:7]), " ".join(words[7:]), " ".join(words).upper(), ""])
    assert contaminated_rows(texts, bench, 13).tolist() == [2]
    assert contaminated_rows(texts, np.empty(0, np.uint64), 13).size == 0
