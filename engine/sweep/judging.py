"""Judging what a sweep stored: every completion a judge version has not seen, in batches. Torch-free:
the judges arrive built (see ``runner.build_judges``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from engine.judges.base import Judge, JudgeItem, with_current_degeneracy
from engine.judges.degenerate import DEGENERACY_VERSION
from engine.types import Completion, Prompt, model_input

if TYPE_CHECKING:
    from engine.executors import Executor

JUDGE_BATCH = 64


def judge_stored(
    store,
    judges: Sequence[Judge],
    prompts: Sequence[Prompt],
    model_hash: str,
    layers: Sequence[int],
    params_hash: str | Sequence[str],
    *,
    on_batch: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    executor: Executor | None = None,
) -> int:
    """Judge every stored completion of these prompts × depths that a judge version has not seen
    (under one params hash, or several: a dynamic-exit sweep has one per threshold).

    ``on_start`` hears how many judgements are due (over all judges) before the first one. With an
    ``executor`` (judges built by its ``build_judge``) the chunks are judged where it runs, spread over
    its workers; verdicts are written here as each chunk arrives.
    """
    by_input = {model_input(p): p for p in prompts}
    hashes = [params_hash] if isinstance(params_hash, str) else list(params_hash)  # dynamic exit: several
    completions = [
        c
        for h in hashes
        for c in store.get_generations(model_hash=model_hash, layers=list(layers), params_hash=h)
        if c.prompt_text in by_input
    ]
    written = refresh_degeneracy_flags(store, completions)
    due = []
    for judge in judges:
        todo_keys = store.missing_verdicts([c.key for c in completions], judge.name, judge.version)
        due.append((judge, [c for c in completions if c.key in todo_keys]))
    if on_start:
        on_start(sum(len(todo) for _judge, todo in due))
    for judge, todo in due:
        chunks = [
            [_judge_item(c, by_input[c.prompt_text]) for c in todo[start : start + size]]
            for size in [_chunk_size(len(todo), executor.workers if executor else 1)]
            for start in range(0, len(todo), size)
        ]
        results = executor.judge(judge, chunks) if executor else map(judge.judge, chunks)
        for verdicts in results:
            written += store.save_verdicts(verdicts)
            if on_batch:
                on_batch(len(verdicts))
    return written


def refresh_degeneracy_flags(store, completions: Sequence[Completion]) -> int:
    """Re-compute the incoherence flag of every stored verdict (any judge) on these completions whose flag
    came from another detector version (or from before versions were recorded); returns how many changed.

    The flag depends only on the completion text, so no judge runs again and no decision changes.
    """
    text_of = {c.key: c.text for c in completions}
    stale = [
        with_current_degeneracy(v, text_of[v.completion_key])
        for v in store.verdicts_for(list(text_of))
        if v.degeneracy_version != DEGENERACY_VERSION
    ]
    return store.save_verdicts(stale) if stale else 0


def _chunk_size(n_items: int, workers: int) -> int:
    """At most JUDGE_BATCH items per chunk, and small enough that every worker gets one."""
    return max(1, min(JUDGE_BATCH, math.ceil(n_items / max(1, workers))))


def _judge_item(completion: Completion, prompt: Prompt) -> JudgeItem:
    return JudgeItem(
        completion_key=completion.key,
        behavior=prompt.text,
        completion=completion.text,
        context=prompt.context,
        tags=prompt.tags,
    )
