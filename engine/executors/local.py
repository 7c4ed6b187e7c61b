"""Today's execution: one model in this process, units generated batch by batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from engine.executors.base import WorkUnit
from engine.types import Completion, GenerationParams


class LocalExecutor:
    """Runs the depth-shared engine in this process; yields each batch as it finishes."""

    workers = 1
    prompts_per_chunk = None  # whole groups: batching is iter_completions' job here

    def __init__(self, load: Callable[[str], object] | None = None) -> None:
        self._load = load

    def load(self, model: str):
        if self._load is None:
            from engine.models import load_model

            return load_model(model)
        return self._load(model)

    def generate(
        self,
        model,
        units: Sequence[WorkUnit],
        params: GenerationParams,
        *,
        rows_per_batch: int | None = None,
    ) -> Iterator[list[Completion]]:
        from engine.generation import iter_completions

        for unit in units:
            yield from iter_completions(
                model, list(unit.prompts), list(unit.layers), params, rows_per_batch=rows_per_batch
            )

    def release(self, model) -> None:
        """Nothing to free: the caller's reference is the model's only owner."""
