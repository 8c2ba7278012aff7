"""Executors: run a stage's unfinished shards locally or on Ray, then write its manifest.

:func:`run` is the one entry point. It plans the stage, skips every shard that already finished
under the same identity, runs the rest, and writes the manifest from all results in shard order,
so the output is the same whichever way it ran:

- ``local`` with ``workers=1`` runs shards in this process, in order (debuggable, no start-up).
- ``local`` with ``workers>1`` uses a forkserver process pool on this machine (a script
  using it needs the usual `if __name__ == "__main__":` guard).
- ``ray`` submits one Ray task per shard to a local Ray (``ray.init()``) or to the cluster at
  ``ray_address``; a stage that holds a model (``stage.holds_model``) runs instead on a pool of
  ``stage.actors`` Ray actors (``stage.num_gpus`` GPUs each) that each load the model once and
  take shards until none is left. Ray is imported only here and only when asked for.

A model stage's torch threads follow the CPUs its process was given: an actor's
``cpus_per_shard``, a local pool worker's share of the cores (``$SYNPREF_TORCH_THREADS`` wins).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from tqdm.auto import tqdm

from synpref_core.config import ExecutorConfig
from synpref_core.io.lock import output_lock
from synpref_core.models import torch_threads
from synpref_core.stages import ShardResult, Stage

log = logging.getLogger(__name__)
PARENT_POLL_S = 0.5  # how often a pool worker checks that its run is alive


def run(
    stage: Stage,
    executor: ExecutorConfig | None = None,
    progress: bool = True,
    on_actors: bool | None = None,
) -> str:
    """Run ``stage`` to completion and return its manifest URI. Finished shards are skipped.

    On Ray, a stage holding a model runs on actors unless ``on_actors=False`` asks for plain
    tasks (the model then loads once per Ray worker process, which an autoscaling cluster may
    prefer)."""
    executor = executor or ExecutorConfig()
    with output_lock(stage.out):
        manifest = _run(stage, executor, progress, on_actors)
        stale = stage.remove_stale()
    if stale:
        shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
        log.warning(
            "%s: removed %d files its manifest does not list: %s", stage.out, len(stale), shown
        )
    return manifest


def _run(stage: Stage, executor: ExecutorConfig, progress: bool, on_actors: bool | None) -> str:
    actors = stage.holds_model if on_actors is None else on_actors
    specs = stage.plan()
    results = {
        i: r for i, spec in enumerate(specs) if (r := stage.finished_result(i, spec)) is not None
    }
    todo = [i for i in range(len(specs)) if i not in results]
    log.info(
        "%s: %d shards, %d to run, %d already done", stage.name, len(specs), len(todo), len(results)
    )
    if todo and stage.holds_model:
        stage.threads = torch_threads(_cpus_per_process(executor))
    bar = tqdm(
        total=len(specs), initial=len(results), desc=stage.name, unit="shard", disable=not progress
    )
    with bar:
        for result in _map(stage, specs, todo, executor, actors):
            results[result["shard"]] = result
            bar.update(1)
            bar.set_postfix(rows=sum(r["counts"].get("rows", 0) for r in results.values()))
    return stage.write_manifest(specs, [results[i] for i in range(len(specs))])


def _cpus_per_process(executor: ExecutorConfig) -> float | None:
    if executor.kind == "ray":
        return executor.cpus_per_shard
    return (os.cpu_count() or 1) / executor.workers if executor.workers > 1 else None


def _map(
    stage: Stage,
    specs: list[dict[str, Any]],
    todo: list[int],
    executor: ExecutorConfig,
    actors: bool,
) -> Iterator[ShardResult]:
    if not todo:
        return
    if executor.kind == "ray" and actors:
        yield from _map_ray_actors(stage, specs, todo, executor)
    elif executor.kind == "ray":
        yield from _map_ray(stage, specs, todo, executor)
    elif executor.workers > 1 and len(todo) > 1:
        context = _pool_context(stage)
        with ProcessPoolExecutor(
            max_workers=executor.workers,
            mp_context=context,
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            futures = [pool.submit(stage.execute_shard, i, specs[i]) for i in todo]
            for future in as_completed(futures):
                yield future.result()
    else:
        for index in todo:
            yield stage.execute_shard(index, specs[index])


def _exit_with_parent(parent: int) -> None:
    """Pool worker initializer: exit as soon as the process that started the pool is gone, so
    a killed run (SIGKILL leaves no chance to clean up) never leaves workers writing shards and
    markers into its output."""

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


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
    """Connect to the configured Ray cluster, or start a local one, once per process.

    The local Ray listens on loopback only (every process of it: GCS, raylet, object manager,
    agents, workers), with Ray's token authentication on as Ray starts it (unless
    ``RAY_AUTH_MODE=disabled``). A cluster keeps the addresses and auth it was started with."""
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return
    if executor.ray_address:
        ray.init(address=executor.ray_address, log_to_driver=False)
        return
    # Ray binds its servers to the node IP, and on Linux it replaces a loopback
    # `_node_ip_address` with the machine's network address (then gRPC listens on all
    # interfaces). It keeps 127.0.0.1 only in its single-machine mode, the default on macOS and
    # Windows (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), which this flag is; it is read only while
    # the node starts, so restore it for a later connection to a cluster from this process.
    multi_node = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            num_cpus=executor.ray_num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = multi_node


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


class StageActor:
    """The body of one Ray actor: it loads the stage's model when it starts (``load_model()``,
    cached per process by the stage), then runs shards."""

    def __init__(self, stage: Stage):
        self.stage = stage
        stage.load_model()

    def execute_shard(self, index: int, spec: dict[str, Any]) -> ShardResult:
        return self.stage.execute_shard(index, spec)


def _map_ray_actors(
    stage: Any, specs: list[dict[str, Any]], todo: list[int], executor: ExecutorConfig
) -> Iterator[ShardResult]:
    """Shards on up to ``stage.actors`` Ray actors of ``executor.cpus_per_shard`` CPUs and
    ``stage.num_gpus`` GPUs each. An actor that dies is restarted and its shard retried
    (shards are idempotent)."""
    import ray
    from ray.util import ActorPool

    ensure_ray(executor)
    actor = ray.remote(
        num_cpus=executor.cpus_per_shard,
        num_gpus=stage.num_gpus,
        max_restarts=1,
        max_task_retries=1,
    )
    count = _actor_count(stage.name, stage.actors, executor, len(todo), stage.num_gpus)
    workers = [actor(StageActor).remote(stage) for _ in range(count)]
    try:
        yield from ActorPool(workers).map_unordered(
            lambda worker, i: worker.execute_shard.remote(i, specs[i]), todo
        )
    finally:
        for worker in workers:
            ray.kill(worker)


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
