"""Embedding on Ray (actor pool, and the plain Ray executor) gives exactly the local vectors."""

from __future__ import annotations

import pyarrow as pa
import pytest

from synpref_core import models
from synpref_core.config import ExecutorConfig
from synpref_core.executors import StageActor, run
from synpref_core.models import THREADS_ENV
from synpref_core.retrieval.embed import EmbedStage
from synpref_core.stages import Manifest, load_manifest
from tests.embed_helpers import embed_config, read_vectors


def _portable(manifest: Manifest) -> dict:
    return {k: v for k, v in manifest.to_json().items() if k not in ("config",)}


@pytest.mark.slow
def test_local_and_ray_embeddings_are_identical(hh_embedded, tmp_path, ray_local, monkeypatch):
    pairs_dir, _ = hh_embedded
    # Float sums split across threads round differently: compare at one torch thread each (a
    # Ray actor or task with cpus_per_shard = 1 runs one thread).
    monkeypatch.setenv(THREADS_ENV, "1")
    local = run(EmbedStage(embed_config(pairs_dir, str(tmp_path / "local"))), progress=False)
    monkeypatch.delenv(THREADS_ENV)
    actors = embed_config(pairs_dir, str(tmp_path / "actors"))
    on_actors = run(EmbedStage(actors), ExecutorConfig(kind="ray"), progress=False)
    tasks = EmbedStage(embed_config(pairs_dir, str(tmp_path / "tasks")))
    on_tasks = run(tasks, ExecutorConfig(kind="ray"), progress=False, on_actors=False)

    expected: pa.Table = read_vectors(tmp_path / "local")
    for name, manifest in (("actors", on_actors), ("tasks", on_tasks)):
        assert _portable(load_manifest(manifest)) == _portable(load_manifest(local)), name
        assert read_vectors(tmp_path / name).equals(expected), name

    # A finished run on Ray starts no actor and rewrites the same manifest.
    again = run(EmbedStage(actors), ExecutorConfig(kind="ray"), progress=False)
    assert load_manifest(again) == load_manifest(on_actors)


@pytest.mark.slow
def test_an_actor_loads_the_model_once(hh_embedded, tmp_path, ray_local):
    def loaded(worker: StageActor) -> list[int]:  # runs in the actor
        return [id(e.model) for e in models._MODELS.values()]

    pairs_dir, _ = hh_embedded
    stage = EmbedStage(embed_config(pairs_dir, str(tmp_path / "one")))
    stage.threads = 1
    actor = ray_local.remote(num_cpus=1)(StageActor).remote(stage)
    before = ray_local.get(actor.__ray_call__.remote(loaded))
    specs = stage.plan()
    for index, spec in enumerate(specs[:2]):
        ray_local.get(actor.execute_shard.remote(index, spec))
    after = ray_local.get(actor.__ray_call__.remote(loaded))
    ray_local.kill(actor)
    assert len(before) == 1 and after == before


@pytest.mark.slow
def test_actors_that_fit_nowhere_on_a_local_ray_fail_at_once(hh_embedded, tmp_path, ray_local):
    # 64 CPUs per actor fit on no local Ray: an error naming the stage, not a shard held forever.
    pairs_dir, _ = hh_embedded
    config = embed_config(pairs_dir, str(tmp_path / "big"))
    with pytest.raises(RuntimeError, match=r"embed: no actor fits .*\(64 CPUs and 0 GPUs each"):
        run(EmbedStage(config), ExecutorConfig(kind="ray", cpus_per_shard=64), progress=False)
