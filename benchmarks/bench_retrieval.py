"""Retrieval benchmark: the LanceDB store's ANN search against exact search, and the embedding
stage against plain sentence-transformers encoding.

**Search** (SYNTHETIC vectors, dim 384, MiniLM's width): a Gaussian mixture of 2,000 clusters,
each a random unit centre plus a 16-dimensional random subspace (spread 0.15 per axis) plus
isotropic noise (σ 0.02), normalised: nearest neighbours sit at cosine distance ~0.25 while
random pairs sit at ~1.0, like sentence embeddings, and the neighbourhoods have low intrinsic
dimension, unlike uniform noise (where no ANN index works and none is needed). Queries are 1,000
fresh draws of the same mixture (as gold pairs are new points near the pool). Per size N:

- **numpy exact**: ``queries @ pool.T`` 256 queries at a time + ``argpartition`` top 8: the
  ground truth and the brute-force baseline (pool in RAM, float32 BLAS).
- **store flat**: ``VectorStore.search(exact=True)`` on a table above ``ann.min_rows`` (LanceDB
  scan, one scan per 256 queries).
- **store in memory** (N ≤ the default ``ann.min_rows``): the same call on a table below
  ``ann.min_rows``, answered from an in-memory copy (``retrieval/flat.py``); the first call reads
  the table (timed apart), the best of two warm calls is reported.
- **store IVF_PQ** (and IVF_HNSW_SQ up to ``--hnsw-max`` rows): index build time, then recall@8
  against the exact top 8 and batched query throughput over a sweep of ``nprobes`` /
  ``refine_factor`` / ``ef``; the cheapest setting with recall ≥ 0.95 is the one reported.

**Embedding** (REAL texts: the first ``--records`` hh-rlhf harmless test records through the real
ingest, rendered by ``render_text``): the embedding stage (``EmbedStage``, local executor, in
process, Parquet in and out) against ``SentenceTransformer.encode`` of the same texts with the same
loaded model (left truncation, 256 tokens), 32 texts per call in input order (the loop), and in
one call (sentence-transformers then sorts all texts by length itself).

    .venv/bin/python -m benchmarks.bench_retrieval            # 100k and 1M (~10 min here)
    .venv/bin/python -m benchmarks.bench_retrieval --quick    # 20k, 100 records (~1 min)

Results: a Markdown table on stdout and ``benchmarks/results/retrieval.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks.bench_scoring import prepare_pairs, read_pairs
from benchmarks.common import RESULTS, machine, timed, write_results
from synpref_core.executors import run
from synpref_core.retrieval.embed import EmbedConfig, EmbedStage
from synpref_core.retrieval.encoder import load_encoder, render_text, token_lengths
from synpref_core.retrieval.store import AnnConfig, StoreConfig, VectorStore
from synpref_core.retrieval.tables import table_schema
from synpref_core.rm.scoring import plan_batches

DIM, CLUSTERS, RANK, SPREAD, NOISE = 384, 2000, 16, 0.15, 0.02
K, QUERY_CHUNK, TARGET_RECALL, ENCODE_BATCH = 8, 256, 0.95, 32
MEMORY_MAX = AnnConfig().min_rows  # the in-memory path serves tables below the ANN threshold
SWEEP = {
    "IVF_PQ": [
        {"nprobes": 10, "refine_factor": 10},
        {"nprobes": 20, "refine_factor": 10},
        {"nprobes": 20, "refine_factor": 20},
        {"nprobes": 20, "refine_factor": 40},
    ],
    "IVF_HNSW_SQ": [
        {"nprobes": 10, "refine_factor": None},
        {"nprobes": 10, "refine_factor": 2},
        {"nprobes": 20, "refine_factor": 2, "ef": 64},
    ],
}


# -- synthetic vectors -------------------------------------------------------------------------


def mixture(n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """``n`` unit vectors of the fixed mixture (the mixture is seed 12345; ``seed`` draws)."""
    rng = np.random.default_rng(12345)
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = np.linalg.qr(rng.standard_normal((CLUSTERS, DIM, RANK)).astype(np.float32))[0]
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, chunk):  # in chunks: temporaries stay at ~150 MB
        label = rng.integers(0, CLUSTERS, min(chunk, n - start))
        z = rng.standard_normal((len(label), RANK), dtype=np.float32) * SPREAD
        block = centres[label] + np.einsum("nr,ndr->nd", z, bases[label])
        block += rng.standard_normal(block.shape, dtype=np.float32) * NOISE
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def pool_rows(start: int, vectors: np.ndarray) -> pa.Table:
    n = len(vectors)
    schema = table_schema("pool", DIM)
    columns = {name: pa.nulls(n, schema.field(name).type) for name in schema.names}
    columns.update(
        pair_id=pa.array([f"{i:08d}" for i in range(start, start + n)]),
        vector=pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
        status=pa.array(["unverified"] * n),
        model=pa.array(["synthetic"] * n),
        model_version=pa.array(["mixture-v1"] * n),
    )
    return pa.table(columns, schema=schema)


# -- search --------------------------------------------------------------------------------------


def exact_numpy(pool: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Top-K row indices per query, nearest first: matrix product + argpartition."""
    top = np.empty((len(queries), K), dtype=np.int64)
    for start in range(0, len(queries), QUERY_CHUNK):
        sim = queries[start : start + QUERY_CHUNK] @ pool.T
        part = np.argpartition(-sim, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1)
        top[start : start + len(part)] = np.take_along_axis(part, order, axis=1)
    return top


def recall(hits: pa.Table, truth: np.ndarray) -> float:
    found = np.array(hits["pair_id"].to_pylist()).reshape(len(truth), K)
    return float(np.mean([f"{j:08d}" in found[i] for i, row in enumerate(truth) for j in row]))


def search_size(n: int, n_queries: int, hnsw_max: int, root: Path) -> dict[str, Any]:
    pool, queries = mixture(n, seed=0), mixture(n_queries, seed=1)
    res: dict[str, Any] = {"n": n, "queries": n_queries, "dim": DIM}
    store = VectorStore(StoreConfig(uri=str(root / f"db-{n}")))
    try:
        start = time.perf_counter()
        for s in range(0, n, 50_000):
            store.upsert("pool", pool_rows(s, pool[s : s + 50_000]))
        store.flush()
        res["load_s"] = time.perf_counter() - start
        truth, t = timed(exact_numpy, pool, queries)
        res["exact_numpy"] = {**t, "qps": n_queries / t["wall_s"], "recall": 1.0}
        nearest = 1.0 - np.einsum("qd,qd->q", queries, pool[truth[:, 0]])
        res["nn_distance_median"] = float(np.median(nearest))
        res["random_distance_median"] = float(np.median(1.0 - queries[:100] @ pool[:1000].T))
        flat_q = min(n_queries, QUERY_CHUNK)
        flat = AnnConfig(min_rows=256)  # the table is above it: LanceDB's own flat scan
        store.config = store.config.model_copy(update={"ann": flat})
        hits, t = timed(store.search, "pool", queries[:flat_q], K, None, ("pair_id",), True)
        res["store_flat"] = {
            **t,
            "qps": flat_q / t["wall_s"],
            "recall": recall(hits, truth[:flat_q]),
        }
        if n <= MEMORY_MAX:
            res["store_memory"] = in_memory(store, n, queries, truth, hits)
        del pool  # the store reads from disk from here on
        res["ann"] = {}
        for kind in SWEEP if n <= hnsw_max else ["IVF_PQ"]:
            res["ann"][kind] = ann_sweep(store, kind, queries, truth)
    finally:
        store.close()
        shutil.rmtree(root / f"db-{n}", ignore_errors=True)
    return res


def in_memory(
    store: VectorStore, n: int, queries: np.ndarray, truth: np.ndarray, flat: pa.Table
) -> dict[str, Any]:
    """The store's in-memory exact path (a table below ``ann.min_rows``) on the flat scan's
    queries: the first call (which reads the table into memory), then warm calls."""
    store.config = store.config.model_copy(update={"ann": AnnConfig(min_rows=n + 1)})
    flat_q = flat.num_rows // K
    first, load = timed(store.search, "pool", queries[:flat_q], K, None, ("pair_id",), True)
    warm = [timed(store.search, "pool", queries[:flat_q], K, None, ("pair_id",), True)[1]]
    warm.append(timed(store.search, "pool", queries[:flat_q], K, None, ("pair_id",), True)[1])
    hits, every = timed(store.search, "pool", queries, K, None, ("pair_id",), True)
    best = min(warm, key=lambda t: t["wall_s"])
    return {
        **best,
        "qps": flat_q / best["wall_s"],
        "first_call_s": load["wall_s"],
        "all_queries_qps": len(queries) / every["wall_s"],
        "recall": recall(hits, truth),
        "same_ids_as_flat": first["pair_id"].equals(flat["pair_id"]),
        "max_distance_diff_vs_flat": float(
            np.abs(first["_distance"].to_numpy() - flat["_distance"].to_numpy()).max()
        ),
    }


def ann_sweep(store: VectorStore, kind: str, queries: np.ndarray, truth: np.ndarray) -> dict:
    handle = store._require("pool")  # benchmark only: drop the other kind's index
    for index in handle.list_indices():
        handle.drop_index(index.name)
    store.config = store.config.model_copy(update={"ann": AnnConfig(kind=kind, min_rows=256)})
    _, build = timed(store.ensure_index, "pool")
    runs = []
    for setting in SWEEP[kind]:
        ann = AnnConfig(kind=kind, min_rows=256, **setting)
        store.config = store.config.model_copy(update={"ann": ann})
        hits, t = timed(store.search, "pool", queries, K)
        runs.append(
            {**setting, **t, "qps": len(queries) / t["wall_s"], "recall": recall(hits, truth)}
        )
    good = [r for r in runs if r["recall"] >= TARGET_RECALL]
    chosen = max(good, key=lambda r: r["qps"]) if good else max(runs, key=lambda r: r["recall"])
    return {"build_s": build["wall_s"], "sweep": runs, "chosen": chosen}


# -- embedding -----------------------------------------------------------------------------------


def embed_benchmark(records: int, repeat: int, root: Path) -> dict[str, Any]:
    pairs_dir = prepare_pairs(records, root)
    config = EmbedConfig(pairs=pairs_dir, out="")
    conversations = read_pairs(pairs_dir)["conversation"].to_pylist()
    texts = [render_text(c, {}, config.max_chars) for c in conversations]
    start = time.perf_counter()
    encoder = load_encoder(config.model)  # shared by all three: the load is timed apart
    load_s = time.perf_counter() - start
    encoder.model.encode(texts[:8], batch_size=8)  # first-call set-up, outside every timing

    def loop() -> np.ndarray:
        parts = [
            encoder.model.encode(
                texts[i : i + ENCODE_BATCH], batch_size=ENCODE_BATCH, normalize_embeddings=True
            )
            for i in range(0, len(texts), ENCODE_BATCH)
        ]
        return np.concatenate(parts)

    def one_call() -> np.ndarray:
        return encoder.model.encode(texts, batch_size=ENCODE_BATCH, normalize_embeddings=True)

    def stage(r: int) -> np.ndarray:
        out = str(root / f"embeddings-{r}")
        run(EmbedStage(config.model_copy(update={"out": out})), progress=False)
        table = pa.concat_tables(read_pairs_dir(out))
        return np.stack(table["vector"].to_numpy(zero_copy_only=False))

    runs: dict[str, list[dict]] = {"loop": [], "one_call": [], "synpref": []}
    vectors: dict[str, np.ndarray] = {}
    for r in range(repeat):  # interleaved, so drifting load hits them all alike
        vectors["loop"], t = timed(loop)
        runs["loop"].append(t)
        vectors["one_call"], t = timed(one_call)
        runs["one_call"].append(t)
        vectors["synpref"], t = timed(stage, r)
        runs["synpref"].append(t)
    lengths = token_lengths(encoder, texts)
    return {
        "texts": len(texts),
        "tokens": int(lengths.sum()),
        "load_s": load_s,
        "computed_tokens": computed_tokens(texts, lengths, config.token_budget),
        "max_abs_diff_vs_synpref": {
            k: float(np.abs(v - vectors["synpref"]).max()) for k, v in vectors.items()
        },
        "runs": runs,
        "token_budget": config.token_budget,
    }


def read_pairs_dir(out: str) -> list[pa.Table]:
    import pyarrow.parquet as pq

    return [pq.read_table(f) for f in sorted(Path(out, "data").glob("*.parquet"))]


def computed_tokens(texts: list[str], lengths: np.ndarray, budget: int) -> dict[str, int]:
    """Tokens each implementation pushes through the model, padding included."""
    loop = sum(
        int(lengths[i : i + ENCODE_BATCH].max()) * len(lengths[i : i + ENCODE_BATCH])
        for i in range(0, len(lengths), ENCODE_BATCH)
    )
    by_chars = lengths[
        np.argsort([-len(t) for t in texts], kind="stable")
    ]  # sentence-transformers' sort
    one_call = sum(
        int(by_chars[i : i + ENCODE_BATCH].max()) * len(by_chars[i : i + ENCODE_BATCH])
        for i in range(0, len(by_chars), ENCODE_BATCH)
    )
    synpref = sum(int(lengths[b].max()) * len(b) for b in plan_batches(lengths, budget))
    return {"loop": loop, "one_call": one_call, "synpref": synpref}


# -- report --------------------------------------------------------------------------------------


def median_wall(runs: list[dict]) -> float:
    return float(np.median([r["wall_s"] for r in runs]))


def report(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"Search: SYNTHETIC clustered vectors (dim {DIM}, {CLUSTERS:,}-cluster Gaussian mixture "
        f"on {RANK}-d subspaces, unit norm), {res['search'][0]['queries']:,} queries, top {K}, "
        f"cosine; {m['cpus']} CPUs ({m['cpu']}), lancedb {m['lancedb']}; "
        f"wall {res['wall_s']:.0f} s in all, peak RSS {res['peak_rss_mib']:,.0f} MiB.",
        "",
        "| N | method | settings | build s | recall@8 | queries/s | × numpy exact |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for size in res["search"]:
        base = size["exact_numpy"]["qps"]
        rows = [("numpy exact (matmul + argpartition)", "", "", size["exact_numpy"])]
        rows.append(("store, flat (LanceDB scan)", "exact=True", "", size["store_flat"]))
        if "store_memory" in size:
            rows.append(
                ("store, in memory (below min_rows)", "exact=True", "", size["store_memory"])
            )
        for kind, ann in size["ann"].items():
            c = ann["chosen"]
            settings = ", ".join(
                f"{k}={c[k]}" for k in ("nprobes", "refine_factor", "ef") if k in c
            )
            rows.append((f"store, {kind}", settings, f"{ann['build_s']:.0f}", c))
        for name, settings, build, r in rows:
            lines.append(
                f"| {size['n']:,} | {name} | {settings} | {build} | {r['recall']:.3f} | "
                f"{r['qps']:,.0f} | {r['qps'] / base:.2f}× |"
            )
    for size in res["search"]:
        if "store_memory" in size:
            mem, flat = size["store_memory"], size["store_flat"]
            lines.append(
                f"- {size['n']:,}: in memory {mem['qps'] / flat['qps']:.1f}× LanceDB's flat scan "
                f"(warm, {mem['wall_s']:.2f} s vs {flat['wall_s']:.2f} s for the same "
                f"queries); the first call, which reads the "
                f"table, {mem['first_call_s']:.2f} s; {mem['all_queries_qps']:,.0f} queries/s "
                f"over all {size['queries']:,}; same ids as the flat scan: "
                f"{mem['same_ids_as_flat']}, distances within "
                f"{mem['max_distance_diff_vs_flat']:.1e}"
            )
    lines += ["", "ANN sweeps (recall@8 / queries/s):"]
    for size in res["search"]:
        for kind, ann in size["ann"].items():
            cells = [
                f"nprobes={r['nprobes']} rf={r['refine_factor']}"
                + (f" ef={r['ef']}" if r.get("ef") else "")
                + f": {r['recall']:.3f} / {r['qps']:,.0f}"
                for r in ann["sweep"]
            ]
            lines.append(f"- {size['n']:,} {kind}: " + "; ".join(cells))
    lines += ["", *embed_report(res["embed"])]
    return "\n".join(lines)


def embed_report(e: dict[str, Any]) -> list[str]:
    labels = {
        "loop": f"`encode` loop ({ENCODE_BATCH} texts per call, input order)",
        "one_call": f"`encode` of all texts in one call (it sorts them; batch {ENCODE_BATCH})",
        "synpref": f"synpref `EmbedStage` (local executor, token budget {e['token_budget']:,})",
    }
    synpref = median_wall(e["runs"]["synpref"])
    lines = [
        f"Embedding: {e['texts']:,} REAL hh-rlhf texts ({e['tokens']:,} tokens after truncation), "
        f"MiniLM-L6 fp32; model load ({e['load_s']:.1f} s) excluded; median of "
        f"{len(e['runs']['synpref'])} interleaved run(s).",
        "",
        "| implementation | wall s | texts/s | tokens computed (incl. padding) | synpref "
        "speed-up | max abs Δ vs synpref | other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in labels.items():
        wall = median_wall(e["runs"][key])
        other = max(r["other_load_cores"] for r in e["runs"][key])
        lines.append(
            f"| {label} | {wall:.1f} | {e['texts'] / wall:.1f} | {e['computed_tokens'][key]:,} | "
            f"{wall / synpref:.2f}× | {e['max_abs_diff_vs_synpref'][key]:.1e} | {other:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000, help="query vectors per size")
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest N for IVF_HNSW_SQ")
    parser.add_argument("--records", type=int, default=600, help="hh-rlhf records to embed")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved embedding runs")
    parser.add_argument("--quick", action="store_true", help="20k vectors, 100 records")
    parser.add_argument("--json", type=Path, default=RESULTS / "retrieval.json")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.queries, args.records, args.hnsw_max = [20_000], 200, 100, 20_000
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        search = [search_size(n, args.queries, args.hnsw_max, Path(tmp)) for n in args.sizes]
        embed = embed_benchmark(args.records, args.repeat, Path(tmp))
    result = {
        "search": search,
        "embed": embed,
        "wall_s": time.perf_counter() - start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": machine("torch", "transformers", "lancedb"),
    }
    print(report(result))
    print(f"\nwrote {write_results(args.json, result)}")


if __name__ == "__main__":
    main()
