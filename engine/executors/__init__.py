"""Where generation runs: in this process (``local``) or on Ray actors (``ray_executor``).

The sweep decides what is missing and writes to the store; an executor only computes. Importing this
package imports neither torch nor ray: ``engine.executors.ray_executor`` is imported only when a caller
asks for Ray (``make_executor(ray=...)``).
"""

from __future__ import annotations

from .base import (
    ChunkActivations,
    ClusterResourcesError,
    ClusterUnavailableError,
    Executor,
    ExecutorStopped,
    ModelHandle,
    WorkerFailedError,
    WorkerPlan,
    WorkUnit,
    plan_workers,
    split_into_units,
)


def make_executor(
    ray: str | None = None,
    *,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    prompts_per_chunk: int | None = None,
    load=None,
    load_kwargs: dict | None = None,
    stop=None,
) -> Executor:
    """The local executor when ``ray`` is None, else a Ray executor on ``ray`` ("local", "auto", an address).

    ``stop`` (a threading.Event): a Ray executor stops waiting for its workers when it is set.
    ``load`` (name -> LoadedModel), when given, replaces ``load_model(name, **load_kwargs)`` (device,
    dtype, trust_remote_code), which the local executor and every Ray worker call otherwise.
    """
    if ray is None:
        from .local import LocalExecutor

        return LocalExecutor(load=load, load_kwargs=load_kwargs)
    from .ray_executor import RayExecutor

    return RayExecutor(
        address=ray,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        prompts_per_chunk=prompts_per_chunk,
        load_kwargs=load_kwargs,
        stop=stop,
    )


__all__ = [
    "ChunkActivations",
    "ClusterResourcesError",
    "ClusterUnavailableError",
    "Executor",
    "ExecutorStopped",
    "ModelHandle",
    "WorkUnit",
    "WorkerFailedError",
    "WorkerPlan",
    "make_executor",
    "plan_workers",
    "split_into_units",
]
