"""Executors: run a stage's unfinished shards locally or on Ray, then write its manifest.

- ``local`` with ``workers=1`` runs shards in this process, in order (debuggable, no start-up).
- ``local`` with ``workers>1`` uses a forkserver process pool on this machine (a script
  using it needs the usual `if __name__ == "__main__":` guard).
- ``ray`` submits one Ray task per shard to a local Ray (``ray.init()``) or to the cluster at
  ``ray_address``. Ray is imported only here and only when asked for.
- :func:`run_stage_on_actors` runs a stage that holds a model (``stage.load_model()``) on a pool
  of Ray actors instead: each loads the model once, then takes shards until none is left.

The output is the same whichever runs it: shards are deterministic and the manifest is built from
their results in shard order.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from tqdm.auto import tqdm

from synpref_core.config import ExecutorConfig
from synpref_core.stages import ShardResult, Stage

log = logging.getLogger(__name__)


def run_stage(stage: Stage, executor: ExecutorConfig | None = None, progress: bool = True) -> str:
    """Run ``stage`` to completion and return its manifest URI. Finished shards are skipped."""
    executor = executor or ExecutorConfig()
    specs = stage.plan()
    results: dict[int, ShardResult] = {}
    todo: list[int] = []
    for index in range(len(specs)):
        done = stage.finished_result(index)
        if done is None:
            todo.append(index)
        else:
            results[index] = done
    log.info(
        "%s: %d shards, %d to run, %d already done", stage.name, len(specs), len(todo), len(results)
    )
    bar = tqdm(
        total=len(specs), initial=len(results), desc=stage.name, unit="shard", disable=not progress
    )
    with bar:
        for result in _map(stage, specs, todo, executor):
            results[result["shard"]] = result
            bar.update(1)
            bar.set_postfix(rows=sum(r["counts"].get("rows", 0) for r in results.values()))
    return stage.write_manifest(specs, [results[i] for i in range(len(specs))])


def _map(stage: Stage, specs: list[dict[str, Any]], todo: list[int], executor: ExecutorConfig):
    if not todo:
        return
    if executor.kind == "ray":
        yield from _map_ray(stage, specs, todo, executor)
    elif executor.workers > 1 and len(todo) > 1:
        context = _pool_context(stage)
        with ProcessPoolExecutor(max_workers=executor.workers, mp_context=context) as pool:
            futures = [pool.submit(stage.execute_shard, i, specs[i]) for i in todo]
            for future in as_completed(futures):
                yield future.result()
    else:
        for index in todo:
            yield stage.execute_shard(index, specs[index])


def _pool_context(stage: Stage) -> multiprocessing.context.BaseContext:
    """forkserver where available: one server process imports the stage's module once and every
    pool (one per stage) forks its workers from it, instead of each worker starting a fresh
    interpreter and importing pyarrow/polars/numpy again (spawn). Both avoid forking a process
    that may hold threads."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([type(stage).__module__])
    return context


def ensure_ray(executor: ExecutorConfig) -> None:
    """Connect to the configured Ray cluster, or start a local one, once per process."""
    import ray

    if ray.is_initialized():
        return
    if executor.ray_address:
        ray.init(address=executor.ray_address, log_to_driver=False)
    else:
        ray.init(num_cpus=executor.ray_num_cpus, include_dashboard=False, log_to_driver=False)


def _map_ray(stage: Stage, specs: list[dict[str, Any]], todo: list[int], executor: ExecutorConfig):
    import ray

    ensure_ray(executor)
    remote = ray.remote(num_cpus=executor.cpus_per_shard, max_retries=2)(_execute)
    stage_ref = ray.put(stage)
    pending = [remote.remote(stage_ref, i, specs[i]) for i in todo]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        yield ray.get(ready[0])


def _execute(stage: Stage, index: int, spec: dict[str, Any]) -> ShardResult:
    return stage.execute_shard(index, spec)


# -- a pool of Ray actors that each load a model once ----------------------------------------


class StageActor:
    """The body of one Ray actor: it loads the stage's model when it starts (``load_model()``,
    cached per process by the stage), then runs shards."""

    def __init__(self, stage: Stage):
        self.stage = stage
        stage.load_model()

    def execute_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        return self.stage.execute_shard(index, spec)


def run_stage_on_actors(
    stage: Stage,
    executor: ExecutorConfig,
    actors: int,
    num_gpus: float = 0,
    progress: bool = True,
) -> str:
    """Run ``stage``'s unfinished shards on up to ``actors`` Ray actors of
    ``executor.cpus_per_shard`` CPUs and ``num_gpus`` GPUs each; return its manifest URI.

    ``stage`` must have a ``load_model()`` method: each actor calls it once when it starts. An
    actor that dies is restarted and its shard retried (shards are idempotent). Finished shards
    are skipped, and a stage with none left starts no actor.
    """
    import ray
    from ray.util import ActorPool

    if not callable(getattr(stage, "load_model", None)):
        raise TypeError(f"{stage.name}: a stage run on actors needs a load_model() method")
    ensure_ray(executor)
    specs = stage.plan()
    results = {i: r for i in range(len(specs)) if (r := stage.finished_result(i)) is not None}
    todo = [i for i in range(len(specs)) if i not in results]
    log.info("%s: %d shards, %d to run on Ray", stage.name, len(specs), len(todo))
    if todo:
        actor = ray.remote(
            num_cpus=executor.cpus_per_shard,
            num_gpus=num_gpus,
            max_restarts=1,
            max_task_retries=1,
        )
        count = _actor_count(stage.name, actors, executor, len(todo), num_gpus)
        workers = [actor(StageActor).remote(stage) for _ in range(count)]
        try:
            shards = ActorPool(workers).map_unordered(
                lambda worker, i: worker.execute_shard.remote(i, specs[i]), todo
            )
            for result in tqdm(shards, total=len(todo), desc=stage.name, disable=not progress):
                results[result["shard"]] = result
        finally:
            for worker in workers:
                ray.kill(worker)
    return stage.write_manifest(specs, [results[i] for i in range(len(specs))])


def _actor_count(
    name: str, actors: int, executor: ExecutorConfig, shards: int, num_gpus: float = 0
) -> int:
    """``actors``, at most one per shard, and on a local Ray no more than fit at once (by CPUs,
    and GPUs if they reserve any): an actor that cannot be placed would hold its first shard
    forever, so none fitting is an error. A cluster may scale up."""
    count = min(actors, shards)
    if executor.ray_address:
        return count
    import ray

    resources = ray.cluster_resources()
    fit = int(resources.get("CPU", 0) // executor.cpus_per_shard)
    if num_gpus:
        fit = min(fit, int(resources.get("GPU", 0) // num_gpus))
    if fit < 1:
        raise RuntimeError(
            f"{name}: no actor fits on this local Ray ({executor.cpus_per_shard:g} CPUs and "
            f"{num_gpus:g} GPUs each; it has {resources.get('CPU', 0):g} and "
            f"{resources.get('GPU', 0):g})"
        )
    if fit < count:
        log.warning("%s: %d actors asked for, %d fit on this local Ray", name, count, fit)
    return min(count, fit)
