"""Generating what a sweep misses: only the (prompt, depth) rows not yet stored, written batch by batch
(dynamic exit: the (prompt, threshold) rows)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from engine.lenses.files import exit_variants_for
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


def missing_thresholds_by_prompt(
    store, model_hash: str, inputs: Sequence[Prompt], n_layers: int, variants: Sequence[GenerationParams]
) -> tuple[dict[tuple[float, ...], list[int]], int]:
    """Dynamic exit: ({tuple of missing thresholds: [prompt index, ...]}, rows missing). Every row runs
    at L layers; each threshold's completions carry that threshold's params hash."""
    index_of = {prompt_key(p.text): i for i, p in enumerate(inputs)}
    per_prompt: dict[int, list[float]] = defaultdict(list)
    for variant in variants:
        missing = store.missing_generations(model_hash, [p.text for p in inputs], [n_layers], variant.key())
        for key, _k in missing:
            per_prompt[index_of[key]].append(variant.threshold)
    groups: dict[tuple[float, ...], list[int]] = defaultdict(list)
    for index, thresholds in per_prompt.items():
        groups[tuple(thresholds)].append(index)
    return groups, sum(len(ts) for ts in per_prompt.values())


def _by_params_hash(batch: Sequence[Completion]) -> dict[str, list[Completion]]:
    """A dynamic-exit batch mixes thresholds: each is stored with its own params."""
    parts: dict[str, list[Completion]] = defaultdict(list)
    for completion in batch:
        parts[completion.params_hash].append(completion)
    return parts


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
    thresholds: Sequence[float] | None = None,
) -> tuple[int, int]:
    """Generate and store every (prompt, depth) not yet stored. Returns (new, already stored).

    Dynamic exit (``params.exit_policy`` confidence or saturation): every (prompt, threshold) instead,
    at L layers (``layers`` is ignored), ``thresholds`` defaulting to ``[params.threshold]``.

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
    model_hash = loaded.info.model_hash
    variants = exit_variants_for(model_hash, params, thresholds, model_name=loaded.info.model_id)
    if params.dynamic_exit:
        groups, n_missing = missing_thresholds_by_prompt(store, model_hash, inputs, loaded.n_layers, variants)
        already = len(inputs) * len(variants) - n_missing
    else:
        groups, n_missing = missing_by_prompt(store, model_hash, inputs, layers, variants[0].key())
        already = len(inputs) * len(layers) - n_missing
    if on_start:
        on_start(n_missing)
    by_missing = {missing: [inputs[i] for i in indices] for missing, indices in groups.items()}
    dynamic_depth = loaded.n_layers if params.dynamic_exit else None
    units = split_into_units(by_missing, executor.prompts_per_chunk, dynamic_depth=dynamic_depth)
    params_of = {v.key(): v for v in variants}
    written = 0
    batches = executor.generate(loaded, units, variants[0], rows_per_batch=rows_per_batch)
    try:
        for batch in batches:
            batch = scored_batch(loaded, batch, variants[0])
            for params_hash, part in _by_params_hash(batch).items():
                keys = [key_of_input[c.prompt_text] for c in part]
                written += store.save_generations(
                    part, params=params_of[params_hash], run_id=run_id, prompt_keys=keys
                )
            if on_batch:
                on_batch(batch)
            if stop is not None and stop.is_set():
                break
    finally:
        batches.close()  # a stopped sweep leaves no generator (or worker call) behind
    if stop is None or not stop.is_set():
        for variant in variants:  # dynamic exit: one params hash per threshold, all at L layers
            fill_missing_nll(store, loaded, inputs, [loaded.n_layers] if dynamic_depth else layers, variant)
    return written, already


NLL_BACKFILL_BATCH = 64  # completions scored per stored update when filling in older rows


def can_score(loaded) -> bool:
    """Whether ``loaded`` is a model in this process (a LoadedModel), not a handle to a remote one."""
    return all(hasattr(loaded, name) for name in ("model", "tokenizer", "layers"))


def scored_batch(loaded, batch: list[Completion], params: GenerationParams) -> list[Completion]:
    """A finished batch with each completion's full-depth NLL (``engine.coherence``), before it is stored.

    One forward pass per batch, at full depth (generation has left the truncation by the time a batch
    is yielded). Hook for remote executors: a worker holding the model scores its own batches with
    ``engine.coherence.with_full_depth_nll`` and returns them scored, so this step finds nothing to do;
    with only a handle here (``can_score`` false) unscored rows are stored with a NULL NLL and
    ``fill_missing_nll`` fills them in whenever the model is next loaded in this process.
    """
    if all(c.full_depth_nll is not None or not c.token_ids for c in batch) or not can_score(loaded):
        return batch
    from engine.coherence import with_full_depth_nll  # torch, like generation itself

    return with_full_depth_nll(loaded, batch, params)


def fill_missing_nll(
    store, loaded, prompts: Sequence[Prompt], layers: Sequence[int], params: GenerationParams
) -> int:
    """Score the stored completions of these model inputs × depths that have no full-depth NLL yet
    (rows from before the NLL was stored, or from a remote worker that did not score); returns how many."""
    if not can_score(loaded):
        return 0
    texts = {p.text for p in prompts}
    todo = [
        c
        for c in store.get_generations(
            model_hash=loaded.info.model_hash, layers=list(layers), params_hash=params.key()
        )
        if c.full_depth_nll is None and c.token_ids and c.prompt_text in texts
    ]
    filled = 0
    for start in range(0, len(todo), NLL_BACKFILL_BATCH):
        chunk = scored_batch(loaded, todo[start : start + NLL_BACKFILL_BATCH], params)
        filled += store.save_full_depth_nll({c.key: c.full_depth_nll for c in chunk})
    return filled
