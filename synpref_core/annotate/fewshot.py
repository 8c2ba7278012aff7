"""Gold few-shot examples for judging candidates (DESIGN §2 step 3): the m ≤ 8 gold pairs
nearest each candidate in the vector store, by (conversation, attributes) embedding.

A candidate's vector is read from the store when it is there (``pool``: Stage 1's retrieved
candidates; ``gold``: calibration, where the pair itself is skipped as its own example) and
embedded now otherwise (Stage 2's in-the-wild pairs), with the encoder and text template the
store's vectors were made with: a different encoder fails with one line instead of searching
the wrong space.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from synpref_core.retrieval.encoder import DEFAULT_ATTRIBUTES, model_version, render_text
from synpref_core.retrieval.retrieve import few_shot_examples
from synpref_core.retrieval.store import VectorStore
from synpref_core.stages import StageError

if TYPE_CHECKING:
    from synpref_core.annotate.stages import JudgeConfig


def few_shot_by_candidate(config: JudgeConfig, pairs: list[dict[str, Any]]) -> dict[str, list]:
    """candidate pair_id → its few-shot gold rows, nearest first (absent: none found)."""
    ids = [p["pair_id"] for p in pairs]
    with VectorStore(config.store, read_only=True) as store:
        vectors = candidate_vectors(store, pairs, config.embed_model, config.embed_max_chars)
        table = few_shot_examples(store, ids, config.few_shot, vectors=vectors)
    shots: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in table.to_pylist():  # ordered by candidate, then rank
        shots[row["candidate_id"]].append(row)
    return dict(shots)


def candidate_vectors(
    store: VectorStore, pairs: list[dict[str, Any]], encoder: str, max_chars: int
) -> np.ndarray:
    """One unit vector per pair, in the gold table's space (see the module docstring)."""
    gold_space = store.model_of("gold")
    ids = [p["pair_id"] for p in pairs]
    found: dict[str, np.ndarray] = {}
    for table in ("pool", "gold"):
        wanted = [pid for pid in ids if pid not in found]
        if not wanted or store.model_of(table) != gold_space:
            continue
        rows = store.fetch(table, wanted, ["pair_id", "vector"])
        for pid, vector in zip(
            rows["pair_id"].to_pylist(), rows["vector"].to_pylist(), strict=True
        ):
            found[pid] = np.asarray(vector, dtype=np.float32)
    missing = [i for i, pid in enumerate(ids) if pid not in found]
    if missing:
        embedded = embed_pairs([pairs[i] for i in missing], encoder, max_chars, gold_space)
        for i, vector in zip(missing, embedded, strict=True):
            found[ids[i]] = vector
    return np.stack([found[pid] for pid in ids]) if ids else np.zeros((0, 0), np.float32)


def embed_pairs(
    pairs: list[dict[str, Any]], encoder_name: str, max_chars: int, space: tuple[str, str] | None
) -> np.ndarray:
    """Embed pairs the way the embed stage does, refusing a space other than the store's."""
    from synpref_core.retrieval.encoder import embed_texts, load_encoder
    from synpref_core.rm.scoring import CPU_TOKEN_BUDGET

    version = model_version(encoder_name, DEFAULT_ATTRIBUTES, max_chars)
    if space is None or space[1] != version:
        raise StageError(
            f"the store's gold vectors are {space}, candidates would be embedded with "
            f"{encoder_name} ({version}): set embed_model to the store's encoder"
        )
    texts = [
        render_text(
            pair["conversation"],
            {name: (pair.get(name) or {}).get("value") for name in DEFAULT_ATTRIBUTES},
            max_chars,
        )
        for pair in pairs
    ]
    vectors, _ = embed_texts(load_encoder(encoder_name), texts, CPU_TOKEN_BUDGET)
    return vectors
