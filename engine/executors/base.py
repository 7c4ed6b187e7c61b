"""The executor contract (torch-free): work units in, completions, verdicts or activations out; the
driver stores them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
