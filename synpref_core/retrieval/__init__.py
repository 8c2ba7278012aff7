"""Retrieval for Stage 1 (DESIGN §2, step 2): embeddings of (conversation, attributes), the LanceDB
vector store of the unverified pool and the gold set, error-driven adaptive kNN retrieval and the
few-shot examples of the annotation prompt.

- ``encoder``: the text template, the sentence-transformers model and its fingerprint.
- ``embed``: ``EmbedStage``, pairs → Parquet shards of L2-normalised vectors (local or Ray).
- ``store``: ``VectorStore`` (tables ``pool`` and ``gold``; one writer thread; ANN index;
  ``add_embeddings`` loads an embedding stage).
- ``tables``: the tables' rows (schema, shaping, SQL literals); imported by the store only one way.
- ``retrieve``: ``adaptive_k``, ``retrieve_candidates``, ``few_shot_examples``.
"""
