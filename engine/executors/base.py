"""The executor contract (torch-free): work units in, completions, verdicts or activations out; the
driver stores them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engine.errors import DepthScopeError
from engine.judges.base import Judge, JudgeItem
from engine.types import Completion, GenerationParams, ModelInfo, Prompt, Verdict


class ClusterUnavailableError(DepthScopeError, ConnectionError):
    """No Ray cluster answers at the address asked for."""


class WorkerFailedError(DepthScopeError, RuntimeError):
    """Workers kept dying; what was stored stays stored, and re-running the same command resumes."""


class ClusterResourcesError(ClusterUnavailableError):
    """The cluster can never give a worker what it asks for (GPUs no node has, more CPUs than any has)."""


class ExecutorStopped(RuntimeError):
    """Stop was pressed while the executor waited (workers starting); nothing more runs."""


@dataclass(frozen=True)
class WorkerPlan:
    """How many workers run, and the sentence saying so when it is fewer than asked for ("" otherwise)."""

    workers: int
    note: str = ""


def plan_workers(
    requested: int, cpus_per_worker: float, gpus_per_worker: float, nodes: Sequence[Mapping[str, float]]
) -> WorkerPlan:
    """Fit ``requested`` workers of ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs each onto the
    nodes' total resources (Ray's ``Resources`` per alive node), node by node as Ray places actors.

    None fits: ClusterResourcesError, one sentence naming what was asked and what the cluster has (Ray
    would wait for it forever). Fewer fit than asked: that many, and a note saying so.
    """
    total_cpus = sum(float(n.get("CPU", 0.0)) for n in nodes)
    total_gpus = sum(float(n.get("GPU", 0.0)) for n in nodes)
    has = f"the Ray cluster has {_amount(total_cpus, 'CPU')} and {_amount(total_gpus, 'GPU')}"
    has += f" on {len(nodes)} node{'s' if len(nodes) != 1 else ''}"
    fits = sum(_fits_on(node, cpus_per_worker, gpus_per_worker) for node in nodes)
    if fits == 0:
        if gpus_per_worker > 0:
            raise ClusterResourcesError(
                f"--gpus-per-worker {gpus_per_worker:g}: no node can give a worker "
                f"{_amount(gpus_per_worker, 'GPU')} and {_amount(cpus_per_worker, 'CPU')} ({has}); use "
                "--gpus-per-worker 0 to run on CPU cores, or join a cluster with GPUs"
            )
        raise ClusterResourcesError(
            f"no node can give a Ray worker {_amount(cpus_per_worker, 'CPU')} ({has}); "
            "add CPUs to the cluster"
        )
    if fits >= requested:
        return WorkerPlan(requested)
    each = _amount(cpus_per_worker, "CPU") + (
        f" and {_amount(gpus_per_worker, 'GPU')}" if gpus_per_worker > 0 else ""
    )
    return WorkerPlan(
        fits, f"--workers {requested}: {has}, room for {fits} worker(s) of {each} each; running {fits}"
    )


def _fits_on(node: Mapping[str, float], cpus: float, gpus: float) -> int:
    """Workers of this size that one node can hold at once (Ray never splits an actor over nodes)."""
    limits = [float(node.get("CPU", 0.0)) / cpus] if cpus > 0 else []
    if gpus > 0:
        limits.append(float(node.get("GPU", 0.0)) / gpus)
    return int(min(limits) + 1e-9) if limits else 0


def _amount(value: float, unit: str) -> str:
    return f"{value:g} {unit}{'' if value == 1 else 's'}"


@dataclass(frozen=True)
class WorkUnit:
    """One model's prompt chunk with all the depths still missing for those prompts.

    ``prompts`` carry the model's input as ``text`` (context already prepended), so the completions'
    keys are the ones the sweep looks up.
    """

    prompts: tuple[Prompt, ...]
    layers: tuple[int, ...]
    # Dynamic exit: the thresholds still missing for these prompts (``layers`` is then (L,)); the
    # generation params say the policy, head and min layers, each threshold gets its own params hash.
    thresholds: tuple[float, ...] = ()

    @property
    def rows(self) -> int:
        return len(self.prompts) * (len(self.thresholds) or len(self.layers))


@dataclass(frozen=True, eq=False)
class ChunkActivations:
    """What a probe needs from the model for one prompt chunk; the probes are fitted on the driver."""

    residuals: np.ndarray  # float32 [n, L+1, hidden]: last-token residual stream at every layer
    refusal_mass: np.ndarray  # float64 [n, L+1]: logit-lens probability of refusal openings
    refusal_token_ids: tuple[int, ...]
    mean_embeddings: np.ndarray  # float32 [n, hidden]: input embeddings averaged over the bare prompt


class ModelHandle(Protocol):
    """What the driver holds for a loaded model: its record (cache keys), never necessarily its weights."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def n_layers(self) -> int: ...


class Executor(Protocol):
    """Computes completions for work units; never touches the store."""

    workers: int
    prompts_per_chunk: int | None  # None: one unit per group of prompts missing the same depths

    def load(self, model: str) -> ModelHandle:
        """Load ``model`` where the work runs; return its handle (raises ModelLoadError)."""
        ...

    def generate(
        self,
        model: ModelHandle,
        units: Sequence[WorkUnit],
        params: GenerationParams,
        *,
        rows_per_batch: int | None = None,
    ) -> Iterator[list[Completion]]:
        """Yield completions as they finish, in any order; every unit's rows exactly once."""
        ...

    def collect(
        self, model: ModelHandle, chunks: Sequence[Sequence[Prompt]], params: GenerationParams
    ) -> Iterator[tuple[int, ChunkActivations]]:
        """Yield (chunk index, its activations) as chunks finish, in any order; each chunk exactly once."""
        ...

    def release(self, model: ModelHandle) -> None:
        """Free what ``load`` took (GPU memory, worker processes)."""
        ...

    def close(self) -> None:
        """Shut down what the executor started (a private Ray cluster); a joined cluster keeps running."""
        ...

    def build_judge(self, name: str, *, judge_model: str | None = None, version: str | None = None) -> Judge:
        """A judge (name, version) to pass to :meth:`judge`; its classifier is loaded where the work runs."""
        ...

    def judge(self, judge: Judge, chunks: Sequence[Sequence[JudgeItem]]) -> Iterator[list[Verdict]]:
        """Yield each chunk's verdicts as the chunk finishes, in any order; each chunk exactly once."""
        ...


def split_into_units(
    groups: dict[tuple, list[Prompt]], prompts_per_chunk: int | None, *, dynamic_depth: int | None = None
) -> list[WorkUnit]:
    """Work units from {missing layers: prompts}: chunks of ``prompts_per_chunk`` (None: whole groups).

    Dynamic exit (``dynamic_depth`` = L): the groups' keys are the missing thresholds, every unit runs at L.
    """
    units = []
    for missing, prompts in groups.items():
        size = prompts_per_chunk or max(1, len(prompts))
        if dynamic_depth is None:
            layers, thresholds = tuple(missing), ()
        else:
            layers, thresholds = (dynamic_depth,), tuple(float(t) for t in missing)
        units += [
            WorkUnit(tuple(prompts[start : start + size]), layers, thresholds)
            for start in range(0, len(prompts), size)
        ]
    return units
