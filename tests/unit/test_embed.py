"""The embedding stage with the real bundled MiniLM over real hh-rlhf pairs, and a tiny second
sentence-transformers model for the model-change path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from synpref_core.executors import run
from synpref_core.retrieval.embed import EmbedStage
from synpref_core.retrieval.encoder import load_encoder, model_version, render_text, token_lengths
from synpref_core.retrieval.store import StoreConfig, StoreError, VectorStore
from synpref_core.rm.model import load_tokenizer
from synpref_core.stages import load_manifest
from tests.embed_helpers import MAX_CHARS, embed_config, read_pairs, read_vectors
from tests.rm_helpers import tiny_bert_config


def tiny_sentence_model(directory: Path) -> Path:
    """A 2-layer, 32-wide BERT with mean pooling (random weights), saved as a sentence model."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer
    from transformers import BertModel

    path = directory / "tiny-st"
    if (path / "modules.json").exists():
        return path
    tokenizer = load_tokenizer()
    tokenizer.truncation_side = "right"
    torch.manual_seed(0)
    config = tiny_bert_config(tokenizer)
    BertModel(config).save_pretrained(directory / "tiny-hf")
    tokenizer.save_pretrained(directory / "tiny-hf")
    transformer = Transformer(str(directory / "tiny-hf"), max_seq_length=128)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    SentenceTransformer(modules=[transformer, pooling]).save(str(path))
    return path


# -- the text ---------------------------------------------------------------------------------


def test_text_is_conversation_then_present_attributes():
    conversation = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ]
    attributes = {"task_category": "math", "objectivity": None, "controversiality": " low "}
    assert render_text(conversation, attributes, max_chars=1000) == (
        "user: What is 2+2?\nassistant: 4.\nuser: And 3+3?\n"
        "task category: math\ncontroversiality: low"
    )
    short = render_text(conversation, attributes, max_chars=14)
    assert short == "…user: And 3+3?\ntask category: math\ncontroversiality: low"


def test_truncation_keeps_the_latest_turn_and_the_attributes():
    encoder = load_encoder()
    conversation = [
        {"role": "user", "content": "an old question " * 400},
        {"role": "user", "content": "the latest question"},
    ]
    text = render_text(conversation, {"objectivity": "objective"}, max_chars=100_000)
    assert token_lengths(encoder, [text])[0] == encoder.max_tokens
    ids = encoder.tokenizer([text], truncation=True, max_length=encoder.max_tokens)["input_ids"][0]
    tail = encoder.tokenizer.decode(ids[-12:])
    assert "the latest question" in tail and "objectivity : objective" in tail


# -- the stage --------------------------------------------------------------------------------


def test_stage_embeds_every_pair_in_order_as_unit_vectors(hh_embedded):
    pairs_dir, embeddings = hh_embedded
    manifest = load_manifest(embeddings)
    pairs = read_pairs(pairs_dir)
    vectors = read_vectors(embeddings)
    assert manifest.num_shards == load_manifest(pairs_dir).num_shards >= 3
    assert manifest.rows == vectors.num_rows == pairs.num_rows > 150
    assert vectors["pair_id"].to_pylist() == pairs["pair_id"].to_pylist()
    assert vectors.schema.field("vector").type == pa.list_(pa.float32(), 384)
    matrix = np.stack(vectors["vector"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-6)
    version = model_version("minilm", ("task_category", "objectivity", "controversiality"), 600)
    assert set(vectors["model"].to_pylist()) == {"minilm"}
    assert set(vectors["model_version"].to_pylist()) == {version}

    # Sorted token-budget batches give what embedding each text alone gives.
    encoder = load_encoder()
    texts = [render_text(c, {}, MAX_CHARS) for c in pairs["conversation"].to_pylist()[:24]]
    single = np.stack([encoder.model.encode([t], normalize_embeddings=True)[0] for t in texts])
    np.testing.assert_allclose(matrix[:24], single, rtol=0, atol=2e-6)


def test_rerun_skips_finished_shards_and_recomputes_a_removed_one(hh_embedded, tmp_path):
    pairs_dir, _ = hh_embedded
    out = tmp_path / "embeddings"
    config = embed_config(pairs_dir, str(out), model=str(tiny_sentence_model(tmp_path)))
    first = load_manifest(run(EmbedStage(config), progress=False))
    (out / "data" / "part-00001.parquet").unlink()
    stage = EmbedStage(config)
    specs = stage.plan()
    missing = [i for i, spec in enumerate(specs) if stage.finished_result(i, spec) is None]
    assert missing == [1]
    assert load_manifest(run(EmbedStage(config), progress=False)) == first


def test_a_changed_model_reembeds_and_the_store_never_mixes(hh_embedded, tmp_path):
    pairs_dir, embeddings = hh_embedded
    tiny = str(tiny_sentence_model(tmp_path))
    out = tmp_path / "embeddings"
    shutil.copytree(embeddings, out)  # MiniLM's finished shards, then the model changes
    minilm = EmbedStage(embed_config(pairs_dir, str(out)))
    other = EmbedStage(embed_config(pairs_dir, str(out), model=tiny))
    assert other.model_version != minilm.model_version
    assert other.config_hash != minilm.config_hash  # so no shard of the old model is reused
    assert all(minilm.finished_result(i, s) for i, s in enumerate(minilm.plan()))
    assert not any(other.finished_result(i, s) for i, s in enumerate(other.plan()))
    run(EmbedStage(embed_config(pairs_dir, str(out), model=tiny)), progress=False)
    vectors = read_vectors(out)
    assert set(vectors["model_version"].to_pylist()) == {other.model_version}
    assert vectors.schema.field("vector").type.list_size == 32

    with VectorStore(StoreConfig(uri=str(tmp_path / "db"))) as store:
        store.add_embeddings(embeddings)
        with pytest.raises(StoreError, match="re-embed"):
            store.add_embeddings(str(out))
        assert store.model_of("pool") == ("minilm", minilm.model_version)
    recreate = StoreConfig(uri=str(tmp_path / "db"), on_model_change="recreate")
    with VectorStore(recreate) as store:
        counts = store.add_embeddings(str(out))
        assert store.model_of("pool") == (tiny, other.model_version)
        assert store.count("pool") == counts["pool"] == vectors.num_rows
