"""Generating what a sweep misses: only the (prompt, depth) rows not yet stored, written batch by batch."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from engine.types import Completion, GenerationParams, Prompt, model_input, prompt_key

if TYPE_CHECKING:
    from engine.executors import Executor


def as_model_prompts(prompts: Sequence[Prompt]) -> list[Prompt]:
    """The same prompts with ``text`` replaced by the model's input (the completion key's text)."""
    return [replace(p, text=model_input(p)) if p.context else p for p in prompts]


def missing_by_prompt(
    store, model_hash: str, inputs: Sequence[Prompt], layers: Sequence[int], params_hash: str
) -> tuple[dict[tuple[int, ...], list[int]], int]:
    """Group what is missing by prompt: ({tuple of missing layers: [prompt index, ...]}, rows missing)."""
    index_of = {prompt_key(p.text): i for i, p in enumerate(inputs)}
    missing = store.missing_generations(model_hash, [p.text for p in inputs], layers, params_hash)
    per_prompt: dict[int, list[int]] = defaultdict(list)
    for key, k in missing:
        per_prompt[index_of[key]].append(k)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, ks in per_prompt.items():
        groups[tuple(sorted(ks, reverse=True))].append(index)
    return groups, sum(len(ks) for ks in per_prompt.values())


def generate_missing(
    store,
    loaded,
    prompts: Sequence[Prompt],
    layers: Sequence[int],
    params: GenerationParams,
    *,
    run_id: str | None = None,
    rows_per_batch: int | None = None,
    on_batch: Callable[[list[Completion]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    executor: Executor | None = None,
) -> tuple[int, int]:
    """Generate and store every (prompt, depth) not yet stored. Returns (new, already stored).

    ``loaded`` is the executor's handle for the model (a LoadedModel for the local executor). The
    executor computes; only this function writes, as each batch or chunk arrives.
    ``on_start`` hears how many rows are missing before the first batch (a progress bar's total).
    """
    from engine.executors import split_into_units

    if executor is None:
        # torch is loaded on first use, not when pages import ``engine.sweep`` for its records.
        from engine.executors.local import LocalExecutor

        executor = LocalExecutor()
    inputs = as_model_prompts(prompts)
    key_of_input = {p.text: prompt_key(o.text, o.context) for p, o in zip(inputs, prompts, strict=True)}
    groups, n_missing = missing_by_prompt(store, loaded.info.model_hash, inputs, layers, params.key())
    already = len(inputs) * len(layers) - n_missing
    if on_start:
        on_start(n_missing)
    by_layers = {group_layers: [inputs[i] for i in indices] for group_layers, indices in groups.items()}
    units = split_into_units(by_layers, executor.prompts_per_chunk)
    written = 0
    batches = executor.generate(loaded, units, params, rows_per_batch=rows_per_batch)
    try:
        for batch in batches:
            keys = [key_of_input[c.prompt_text] for c in batch]
            written += store.save_generations(batch, params=params, run_id=run_id, prompt_keys=keys)
            if on_batch:
                on_batch(batch)
            if stop is not None and stop.is_set():
                break
    finally:
        batches.close()  # a stopped sweep leaves no generator (or worker call) behind
    return written, already
