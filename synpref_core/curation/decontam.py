"""n-gram decontamination: drop a pair whose conversation shares any word n-gram (n = 13 by
default, DESIGN §1) with a benchmark prompt.

Text is lower-cased and split into ``\\w+`` words; the messages of a conversation are joined, so
an n-gram may span two turns. Each n-gram becomes a 64-bit polynomial hash over 64-bit word
hashes, computed for a whole batch at once with numpy (wrapping uint64 arithmetic), and looked up
by binary search in the sorted benchmark hashes. A false positive needs a 64-bit collision
(about 1 in 10^19 per lookup at these sizes), so nothing else is re-checked.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

_WORD_SEED = 0x5EED
_BASE = np.uint64(0x100000001B3)  # FNV prime: odd, so the polynomial mixes every position
_FILTER_BITS = 20  # 1 MiB table: with ~20k benchmark n-grams, ~2 % of lookups pass it


def conversation_texts(conversation: pa.ChunkedArray | pa.Array) -> pl.Series:
    """One string per row: the contents of its messages joined by newlines."""
    series = pl.Series("conversation", conversation)
    return series.list.eval(pl.element().struct.field("content")).list.join("\n")


def ngram_hashes(texts: pl.Series, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(row index, n-gram hash) for every word n-gram of every text, as uint32/uint64 arrays."""
    words = (
        pl.DataFrame({"text": texts})
        .with_row_index("row")
        .select("row", pl.col("text").str.to_lowercase().str.extract_all(r"\w+").alias("w"))
        .explode("w")
        .drop_nulls("w")
    )
    rows = words["row"].to_numpy()
    hashes = words["w"].hash(seed=_WORD_SEED).to_numpy()
    m = len(hashes) - n + 1
    if m <= 0:
        return np.empty(0, np.uint32), np.empty(0, np.uint64)
    acc = hashes[:m].copy()
    with np.errstate(over="ignore"):
        for j in range(1, n):
            acc *= _BASE
            acc += hashes[j : j + m]
    valid = rows[:m] == rows[n - 1 :]
    return rows[:m][valid], acc[valid]


def benchmark_ngrams(texts: list[str], n: int) -> np.ndarray:
    """Sorted unique n-gram hashes of benchmark prompts."""
    _, hashes = ngram_hashes(pl.Series("text", texts, dtype=pl.String), n)
    return np.unique(hashes)


def contaminated_rows(texts: pl.Series, benchmark: np.ndarray, n: int) -> np.ndarray:
    """Sorted indices of the texts that share at least one n-gram with the benchmark."""
    if benchmark.size == 0 or texts.len() == 0:
        return np.empty(0, np.int64)
    rows, hashes = ngram_hashes(texts, n)
    # A table of the benchmark hashes' top bits rules out nearly every n-gram with one gather
    # (~4x cheaper than binary search over millions); only the few left are searched.
    shift = np.uint64(64 - _FILTER_BITS)
    table = np.zeros(1 << _FILTER_BITS, dtype=bool)
    table[benchmark >> shift] = True
    maybe = np.flatnonzero(table[hashes >> shift])
    pos = np.searchsorted(benchmark, hashes[maybe])
    pos[pos == benchmark.size] = 0
    hit = maybe[benchmark[pos] == hashes[maybe]]
    return np.unique(rows[hit]).astype(np.int64)
