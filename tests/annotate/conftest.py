"""The annotation tests' shared world: real hh-rlhf pairs embedded by the bundled MiniLM, gold
and pool in a real LanceDB store, candidate pairs, and a local two-judge panel (tiny real RMs)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from synpref_core.annotate.panel import JudgePanel
from synpref_core.retrieval.store import StoreConfig, VectorStore
from synpref_core.retrieval.tables import store_rows
from tests.embed_helpers import read_pairs, read_vectors
from tests.rm_helpers import tiny_model_dir

GOLD = 40
CANDIDATES = 10


@pytest.fixture(scope="package")
def world(hh_embedded, tmp_path_factory) -> dict:
    """Gold and pool in a store, candidate pairs as a stage, a local two-judge panel."""
    root = tmp_path_factory.mktemp("annotate")
    pairs_dir, embeddings = hh_embedded
    pairs, vectors = read_pairs(pairs_dir), read_vectors(embeddings)
    status = ["gold"] * GOLD + ["unverified"] * (pairs.num_rows - GOLD)
    pairs = pairs.set_column(pairs.schema.get_field_index("status"), "status", pa.array(status))
    store = StoreConfig(uri=str(root / "vectors"))
    with VectorStore(store) as vs:
        vs.upsert("gold", store_rows(pairs.slice(0, GOLD), vectors, "gold"))
        vs.upsert("pool", store_rows(pairs.slice(GOLD), vectors, "pool"))
        vs.flush()
    candidates = pairs.slice(GOLD, CANDIDATES)
    panel = JudgePanel(
        local_models={
            "best": str(tiny_model_dir(root / "best", seed=0)),
            "gold": str(tiny_model_dir(root / "gold", seed=1)),
        },
        samples=3,
        cache_dir=str(root / "cache"),
    )
    gold_ids = pairs["pair_id"].to_pylist()[:GOLD]
    return {"root": root, "store": store, "candidates": candidates, "panel": panel,
            "gold_ids": gold_ids}  # fmt: skip
