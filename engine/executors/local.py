"""Today's execution: one model in this process, units generated batch by batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from engine.executors.base import ChunkActivations, WorkUnit
from engine.judges.base import Judge, JudgeItem
from engine.types import Completion, GenerationParams, Prompt, Verdict, model_input


def chunk_activations(loaded, prompts: Sequence[Prompt], params: GenerationParams) -> ChunkActivations:
    """Residuals and logit-lens refusal mass of one prompt chunk (also what each Ray actor runs)."""
    from engine.lenses import logit  # torch: only when activations are computed
    from engine.probes.activations import mean_input_embeddings

    residuals = logit.last_token_residuals(
        loaded, [model_input(p) for p in prompts], params, batch_size=logit.DEFAULT_BATCH_SIZE
    )
    refusal_ids = logit.refusal_token_ids(loaded.tokenizer)
    return ChunkActivations(
        residuals=residuals.numpy(),
        refusal_mass=logit.refusal_mass(loaded, residuals, refusal_ids),
        refusal_token_ids=tuple(refusal_ids),
        mean_embeddings=mean_input_embeddings(loaded, [model_input(p) for p in prompts]),
    )


class LocalExecutor:
    """Runs the depth-shared engine in this process; yields each batch as it finishes."""

    workers = 1
    prompts_per_chunk = None  # whole groups: batching is iter_completions' job here

    def __init__(self, load: Callable[[str], object] | None = None, load_kwargs: dict | None = None) -> None:
        self._load = load
        self._load_kwargs = dict(load_kwargs or {})  # device, dtype, trust_remote_code

    def load(self, model: str):
        if self._load is None:
            from engine.models import load_model

            return load_model(model, **self._load_kwargs)
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
                model,
                list(unit.prompts),
                list(unit.layers),
                params,
                rows_per_batch=rows_per_batch,
                thresholds=list(unit.thresholds) or None,
            )

    def collect(
        self, model, chunks: Sequence[Sequence[Prompt]], params: GenerationParams
    ) -> Iterator[tuple[int, ChunkActivations]]:
        for index, chunk in enumerate(chunks):
            yield index, chunk_activations(model, chunk, params)

    def release(self, model) -> None:
        """Nothing to free: the caller's reference is the model's only owner."""

    def close(self) -> None:
        """Nothing to shut down."""

    def build_judge(self, name: str, *, judge_model: str | None = None, version: str | None = None) -> Judge:
        from engine.judges.registry import get_judge

        return get_judge(name, judge_model=judge_model, version=version)

    def judge(self, judge: Judge, chunks: Sequence[Sequence[JudgeItem]]) -> Iterator[list[Verdict]]:
        for chunk in chunks:
            yield judge.judge(list(chunk))
