"""Scoring on Ray actors gives exactly the local executor's numbers."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from synpref_core import models
from synpref_core.config import ExecutorConfig
from synpref_core.executors import StageActor, run
from synpref_core.models import THREADS_ENV
from synpref_core.rm.scoring import ScoreConfig, ScoreStage
from synpref_core.stages import Manifest, load_manifest
from tests.rm_helpers import MAX_LENGTH


def _config(pairs: str, model: str, out: str) -> ScoreConfig:
    return ScoreConfig(
        model=model,
        max_length=MAX_LENGTH,
        token_budget=512,
        pairs=pairs,
        out=out,
        actors=2,
        batch_rows=16,
    )


def _scores(directory) -> pl.DataFrame:
    return pl.read_parquet(sorted(directory.glob("data/*.parquet")))


def _portable(manifest: Manifest) -> dict:
    return {k: v for k, v in manifest.to_json().items() if k not in ("config",)}


@pytest.mark.slow
def test_local_and_ray_scores_are_identical(
    pairs_dir,
    tiny,
    tmp_path,
    ray_local,
    monkeypatch,
):
    # Float sums split across threads round differently, so the numbers are a function of the
    # thread count too: bit-for-bit equal at equal counts, within float32 rounding otherwise.
    # Each Ray actor gets cpus_per_shard = 1 CPU, hence 1 thread; the local run is pinned to 1.
    default = run(ScoreStage(_config(pairs_dir, tiny, str(tmp_path / "default"))), progress=False)
    monkeypatch.setenv(THREADS_ENV, "1")
    local = run(ScoreStage(_config(pairs_dir, tiny, str(tmp_path / "local"))), progress=False)
    monkeypatch.delenv(THREADS_ENV)
    ray_config = _config(pairs_dir, tiny, str(tmp_path / "ray"))
    on_ray = run(ScoreStage(ray_config), ExecutorConfig(kind="ray"), progress=False)

    assert _portable(load_manifest(on_ray)) == _portable(load_manifest(local))
    assert _scores(tmp_path / "ray").equals(_scores(tmp_path / "local"))
    assert load_manifest(default).counts == load_manifest(on_ray).counts
    for column in ("r_chosen", "r_rejected", "p"):
        np.testing.assert_allclose(
            _scores(tmp_path / "default")[column].to_numpy(),
            _scores(tmp_path / "ray")[column].to_numpy(),
            rtol=0,
            atol=1e-6,
        )

    # A finished run on Ray starts no actor and rewrites the same manifest.
    again = run(ScoreStage(ray_config), ExecutorConfig(kind="ray"), progress=False)
    assert load_manifest(again) == load_manifest(on_ray)


@pytest.mark.slow
def test_an_actor_loads_the_model_once(pairs_dir, tiny, tmp_path, ray_local):
    def models_and_threads(worker: StageActor) -> tuple[list[int], int]:  # runs in the actor
        return [id(model) for model, _ in models._MODELS.values()], torch.get_num_threads()

    stage = ScoreStage(_config(pairs_dir, tiny, str(tmp_path / "one")))
    stage.threads = 1
    actor = ray_local.remote(num_cpus=1)(StageActor).remote(stage)
    loaded, _ = ray_local.get(actor.__ray_call__.remote(models_and_threads))
    specs = stage.plan()
    for index, spec in enumerate(specs):
        ray_local.get(actor.execute_shard.remote(index, spec))
    after, threads = ray_local.get(actor.__ray_call__.remote(models_and_threads))
    ray_local.kill(actor)
    assert len(loaded) == 1 and after == loaded  # loaded at start, the same model for all shards
    assert threads == 1
    assert all(stage.finished_result(i, spec) is not None for i, spec in enumerate(specs))


@pytest.mark.slow
def test_actors_that_reserve_more_gpus_than_there_are_fail_at_once(
    pairs_dir,
    tiny,
    tmp_path,
    ray_local,
):
    # 64 GPUs per actor fit on no local machine: an error naming them, not a shard held forever.
    config = _config(pairs_dir, tiny, str(tmp_path / "gpu")).model_copy(update={"num_gpus": 64})
    with pytest.raises(RuntimeError, match="64 GPUs each"):
        run(ScoreStage(config), ExecutorConfig(kind="ray"), progress=False)
