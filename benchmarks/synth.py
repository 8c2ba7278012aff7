"""Deterministic SYNTHETIC preference pairs built from the real sets in ``data/``.

The real sets hold about 4,600 pairs; benchmarks of scale need millions, so this module makes
them up from the real texts (DESIGN §1, data/README.md: say so wherever a figure comes from
synthetic rows). Every synthetic row takes a real prompt and two different real responses from
the pools below and appends a perturbation to each (words sampled from the real responses'
vocabulary and the row index), so ordinary rows, and their texts, are unique. A seeded share of
rows is made invalid on purpose:

====================  =======  ==============================================================
kind                  share    what the row is
====================  =======  ==============================================================
``duplicate``         2 %      an exact copy of an earlier ordinary row
``empty_side``        0.5 %    chosen or rejected is ``""`` or whitespace only
``identical_sides``   0.5 %    chosen == rejected
``contaminated``      1 %      the prompt contains a 13-word span copied from a benchmark prompt
``normal``            rest     a unique, valid, clean pair
====================  =======  ==============================================================

Real pools: hh-rlhf harmless test (last human turn, final assistant turns, parsed with
:func:`synpref_core.ingest.formats.parse_hh_dialogue`), PandaLM, LLMBar and OffsetBias. The
"benchmark" is 500 distinct LLMBar / OffsetBias prompts of at least 13 words, written as a
``pairs``-format JSON-lines file next to the pairs; those prompts, and any pool prompt sharing a
13-gram with them, are kept out of the prompt pool, so only the injected rows are contaminated.

Files are cached under ``benchmarks/results/synth/`` by (generator version, N, seed); the meta
file is written last, so a file whose meta exists is complete. Run ``python -m benchmarks.synth
--n 1000`` to generate one by hand.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from synpref_core.ingest.formats import parse_hh_dialogue
from synpref_core.ingest.readers import RowError

VERSION = 2  # bump when the generated rows change, so cached files are not reused
REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
RESULTS = REPO / "benchmarks" / "results"
SYNTH_DIR = RESULTS / "synth"

NGRAM = 13
BENCH_PROMPTS = 500
_WORD = re.compile(r"\w+")
_VOCAB_WORD = re.compile(r"[A-Za-z]{3,12}")

NORMAL, DUPLICATE, EMPTY_SIDE, IDENTICAL, CONTAMINATED = range(5)
KIND_NAMES = ("normal", "duplicate", "empty_side", "identical_sides", "contaminated")
# Upper bounds of each kind on a uniform draw; the rest is NORMAL.
SHARES = ((DUPLICATE, 0.02), (EMPTY_SIDE, 0.005), (IDENTICAL, 0.005), (CONTAMINATED, 0.01))
CHUNK_ROWS = 20_000


@dataclass(frozen=True)
class SynthData:
    pairs: Path  # the synthetic pairs, JSON lines
    bench: Path  # the benchmark prompts, JSON lines in the same format
    meta: dict[str, Any]


@dataclass
class _Pools:
    prompts: list[str]
    responses: list[str]
    vocab: list[str]
    bench: list[dict[str, str]]  # {"prompt", "chosen", "rejected"}
    counts: dict[str, int]


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    """Word n-grams of ``text`` under the rule of DESIGN §1 (lower-case ``\\w+`` words)."""
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _real_records() -> dict[str, list[tuple[str, str, str]]]:
    """(prompt, response 1, response 2) of every real pair, per source; labels do not matter."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    hh = []
    with gzip.open(DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt") as f:
        for line in f:
            raw = json.loads(line)
            try:
                chosen = parse_hh_dialogue(raw["chosen"], "chosen")
                rejected = parse_hh_dialogue(raw["rejected"], "rejected")
            except RowError:
                continue
            users = [m["content"] for m in chosen[:-1] if m["role"] == "user"]
            if (
                not users
                or chosen[-1]["role"] != "assistant"
                or rejected[-1]["role"] != "assistant"
            ):
                continue
            hh.append((users[-1], chosen[-1]["content"], rejected[-1]["content"]))
    out["hh-rlhf"] = hh
    pandalm = []
    for item in json.loads((DATA / "pandalm" / "testset-v1.json").read_text()):
        prompt = item["instruction"]
        if isinstance(item.get("input"), str) and item["input"].strip():
            prompt = f"{prompt}\n\n{item['input']}"
        pandalm.append((prompt, item["response1"], item["response2"]))
    out["pandalm"] = pandalm
    llmbar = []
    for path in sorted(
        glob.glob(str(DATA / "llmbar" / "Dataset" / "**" / "dataset.json"), recursive=True)
    ):
        for item in json.loads(Path(path).read_text()):
            first, second = item["output_1"], item["output_2"]
            if str(item.get("label")) == "2":
                first, second = second, first
            llmbar.append((item["input"], first, second))
    out["llmbar"] = llmbar
    offset = []
    doc = json.loads((DATA / "offsetbias" / "evalbiasbench" / "biasbench.json").read_text())
    for items in doc.values():
        for item in items:
            first, second = item["response1"], item["response2"]
            if str(item.get("label")) == "2":
                first, second = second, first
            offset.append((item["instruction"], first, second))
    out["offsetbias"] = offset
    # Drop non-string fields (PandaLM has a few boolean responses).
    return {
        name: [r for r in rows if all(isinstance(x, str) for x in r)] for name, rows in out.items()
    }


def _pools(seed: int) -> _Pools:
    records = _real_records()
    # The benchmark: BENCH_PROMPTS distinct LLMBar / OffsetBias prompts with a 13-gram.
    first_seen: dict[str, tuple[str, str, str]] = {}
    for name in ("llmbar", "offsetbias"):
        for rec in records[name]:
            if rec[0].strip() and len(_WORD.findall(rec[0])) >= NGRAM:
                first_seen.setdefault(rec[0], rec)
    candidates = sorted(first_seen)
    rng = np.random.default_rng([seed, 1])
    picked = sorted(
        rng.choice(
            len(candidates), size=min(BENCH_PROMPTS, len(candidates)), replace=False
        ).tolist()
    )
    bench = [
        dict(zip(("prompt", "chosen", "rejected"), first_seen[candidates[i]], strict=True))
        for i in picked
    ]
    bench_grams: set[tuple[str, ...]] = set()
    for row in bench:
        bench_grams |= ngrams(row["prompt"])
    # Prompt pool: every real prompt that shares no 13-gram with the benchmark.
    prompts = {rec[0] for rows in records.values() for rec in rows if rec[0].strip()}
    clean = sorted(p for p in prompts if not (ngrams(p) & bench_grams))
    # Response pool: distinct non-blank responses (distinct after strip, so two different
    # pool entries never make an identical-sides pair).
    by_stripped: dict[str, str] = {}
    for rows in records.values():
        for rec in rows:
            for text in rec[1:]:
                if text.strip():
                    by_stripped.setdefault(text.strip(), text)
    responses = [by_stripped[k] for k in sorted(by_stripped)]
    vocab = sorted({w for text in responses for w in _VOCAB_WORD.findall(text)})
    counts = {f"real_{name}": len(rows) for name, rows in records.items()}
    counts.update(
        prompt_pool=len(clean),
        prompts_dropped_as_overlapping=len(prompts) - len(clean),
        response_pool=len(responses),
        vocab=len(vocab),
        bench_prompts=len(bench),
    )
    return _Pools(clean, responses, vocab, bench, counts)


def _paths(n: int, seed: int, root: Path) -> tuple[Path, Path, Path]:
    stem = f"v{VERSION}-s{seed}"
    return (
        root / f"pairs-{stem}-n{n}.jsonl",
        root / f"bench-{stem}.jsonl",
        root / f"pairs-{stem}-n{n}.meta.json",
    )


def _write_atomic(path: Path, chunks) -> int:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    size = 0
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            size += len(chunk)
    os.replace(tmp, path)
    return size


def _word_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _WORD.finditer(text)]


def generate(n: int, seed: int = 0, root: Path = SYNTH_DIR) -> SynthData:
    """Write N synthetic pairs (and the benchmark file) under ``root``; overwrite any cache."""
    if n < 1:
        raise ValueError("n must be at least 1")
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    pairs_path, bench_path, meta_path = _paths(n, seed, root)
    pools = _pools(seed)
    _write_atomic(
        bench_path,
        [b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in pools.bench)],
    )

    rng = np.random.default_rng([seed, 2, n])
    u = rng.random(n)
    kind = np.full(n, NORMAL, dtype=np.int8)
    low = 0.0
    for code, share in SHARES:
        kind[(u >= low) & (u < low + share)] = code
        low += share
    kind[0] = NORMAL  # a duplicate needs an earlier ordinary row
    n_prompts, n_resp, n_vocab = len(pools.prompts), len(pools.responses), len(pools.vocab)
    prompt_i = rng.integers(n_prompts, size=n).tolist()
    first_i = rng.integers(n_resp, size=n)
    second_i = ((first_i + 1 + rng.integers(n_resp - 1, size=n)) % n_resp).tolist()
    first_i = first_i.tolist()
    words = rng.integers(n_vocab, size=(n, 7)).tolist()
    side = rng.integers(2, size=n).tolist()
    blank = rng.integers(2, size=n).tolist()
    bench_i = rng.integers(len(pools.bench), size=n).tolist()
    span_at = rng.random(n).tolist()
    dup_at = rng.random(n).tolist()
    bench_spans = [_word_spans(r["prompt"]) for r in pools.bench]
    kinds = kind.tolist()
    prompts, responses, vocab = pools.prompts, pools.responses, pools.vocab

    def row(i: int) -> dict[str, str]:
        w = words[i]
        tail = f"({vocab[w[0]]} {vocab[w[1]]} {vocab[w[2]]}, variant {i})"
        prompt = prompts[prompt_i[i]]
        # Responses are perturbed too, so texts are as unique as real data's (the pools hold
        # only a few thousand responses; repeated texts would flatter Parquet's encoders).
        chosen = f"{responses[first_i[i]]}\n\n({vocab[w[3]]} {vocab[w[4]]} {i})"
        rejected = f"{responses[second_i[i]]}\n\n({vocab[w[5]]} {vocab[w[6]]} {i})"
        k = kinds[i]
        if k == CONTAMINATED:
            text = pools.bench[bench_i[i]]["prompt"]
            spans = bench_spans[bench_i[i]]
            start = int(span_at[i] * (len(spans) - NGRAM + 1))
            copied = text[spans[start][0] : spans[start + NGRAM - 1][1]]
            prompt = f"{prompt} {copied} {tail}"
        else:
            prompt = f"{prompt} {tail}"
        if k == EMPTY_SIDE:
            empty = "" if blank[i] else "  \n"
            chosen, rejected = (empty, rejected) if side[i] else (chosen, empty)
        elif k == IDENTICAL:
            rejected = chosen
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    def chunks():
        for lo in range(0, n, CHUNK_ROWS):
            out = []
            for i in range(lo, min(lo + CHUNK_ROWS, n)):
                if kinds[i] == DUPLICATE:
                    j = int(dup_at[i] * i)
                    while kinds[j] != NORMAL:
                        j -= 1
                    out.append(orjson.dumps(row(j), option=orjson.OPT_APPEND_NEWLINE))
                else:
                    out.append(orjson.dumps(row(i), option=orjson.OPT_APPEND_NEWLINE))
            yield b"".join(out)

    size = _write_atomic(pairs_path, chunks())
    tally = np.bincount(kind, minlength=len(KIND_NAMES)).tolist()
    meta = {
        "synthetic": True,
        "note": "SYNTHETIC pairs generated from the real sets in data/ (see benchmarks/synth.py)",
        "version": VERSION,
        "n": n,
        "seed": seed,
        "pairs": str(pairs_path),
        "bench": str(bench_path),
        "bytes": size,
        "kinds": dict(zip(KIND_NAMES, tally, strict=True)),
        # What a correct ingest must report for this file.
        "expected": {
            "input_rows": n,
            "rows": tally[NORMAL],
            "duplicates": tally[DUPLICATE],
            "contaminated": tally[CONTAMINATED],
            "quarantined": tally[EMPTY_SIDE] + tally[IDENTICAL],
            "quarantined.empty_side": tally[EMPTY_SIDE],
            "quarantined.identical_sides": tally[IDENTICAL],
        },
        "pools": pools.counts,
        "generate_s": round(time.perf_counter() - started, 2),
    }
    _write_atomic(meta_path, [json.dumps(meta, indent=2).encode() + b"\n"])
    return SynthData(pairs_path, bench_path, meta)


def ensure(n: int, seed: int = 0, root: Path = SYNTH_DIR) -> SynthData:
    """The cached synthetic files for (N, seed), generated on first use."""
    pairs_path, bench_path, meta_path = _paths(n, seed, root)
    if meta_path.exists() and pairs_path.exists() and bench_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("bytes") == pairs_path.stat().st_size:
            return SynthData(pairs_path, bench_path, meta)
    return generate(n, seed, root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, required=True, help="number of synthetic pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if cached")
    args = parser.parse_args(argv)
    data = generate(args.n, args.seed) if args.force else ensure(args.n, args.seed)
    print(json.dumps(data.meta, indent=2))


if __name__ == "__main__":
    main()
