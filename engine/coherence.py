"""How fluent is a completion? The full-depth model's mean per-token negative log-likelihood of it.

A truncated model's completion is scored by the *untruncated* model given the same rendered prompt:
fluent text (a refusal, an answer, even a wrong one) is cheap for the full model to predict; letter
runs, symbol soup and whitespace runs are not. It complements the heuristic flag in
``engine.judges.degenerate`` with a graded, model-based number (nats per token; lower = more fluent).

One forward pass per batch: prompt + completion, left padded, logits kept only for the completion's
positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from engine.decoding.prompts import fit_prompts, left_pad, position_ids_for
from engine.models import LoadedModel
from engine.types import Completion, GenerationParams

DEFAULT_ROWS_PER_BATCH = 16


def full_depth_nll(
    loaded: LoadedModel,
    prompts: Sequence[str],
    completion_token_ids: Sequence[Sequence[int]],
    params: GenerationParams,
    *,
    rows_per_batch: int = DEFAULT_ROWS_PER_BATCH,
) -> list[float | None]:
    """Mean NLL (nats/token) of each completion's tokens given its prompt, at the model's full depth.

    Prompts are rendered exactly as generation renders them (chat template, system prompt), so only the
    completion tokens are scored. ``completion_token_ids`` are scored as given (an EOS that ended the
    completion counts: the full model is asked whether it would stop there too). None for an empty one.
    """
    per_token = full_depth_token_nll(
        loaded, prompts, completion_token_ids, params, rows_per_batch=rows_per_batch
    )
    return [sum(values) / len(values) if values else None for values in per_token]


def full_depth_token_nll(
    loaded: LoadedModel,
    prompts: Sequence[str],
    completion_token_ids: Sequence[Sequence[int]],
    params: GenerationParams,
    *,
    rows_per_batch: int = DEFAULT_ROWS_PER_BATCH,
) -> list[list[float]]:
    """Each completion token's NLL (nats) under the full-depth model, in order; [] for an empty one."""
    if len(prompts) != len(completion_token_ids):
        raise ValueError(f"{len(prompts)} prompts but {len(completion_token_ids)} completions")
    # The prompt exactly as generation fed it: cut from the left to the same context budget when too long.
    encoded = [ids for ids, _ in fit_prompts(loaded, prompts, params)]
    scores: list[list[float]] = [[] for _ in prompts]
    # Similar lengths share a batch, so little of each forward pass is padding.
    todo = sorted(
        (i for i, ids in enumerate(completion_token_ids) if len(ids)),
        key=lambda i: len(encoded[i]) + len(completion_token_ids[i]),
    )
    step = max(1, rows_per_batch)
    for start in range(0, len(todo), step):
        rows = todo[start : start + step]
        batch = _batch_token_nll(loaded, [encoded[i] for i in rows], [completion_token_ids[i] for i in rows])
        for row, values in zip(rows, batch, strict=True):
            scores[row] = values
    return scores


def completion_nll(
    loaded: LoadedModel, completions: Sequence[Completion], params: GenerationParams, **kwargs
) -> list[float | None]:
    """``full_depth_nll`` for stored completions (same model and generation parameters as produced them)."""
    return full_depth_nll(
        loaded, [c.prompt_text for c in completions], [c.token_ids for c in completions], params, **kwargs
    )


def with_full_depth_nll(
    loaded: LoadedModel, completions: Sequence[Completion], params: GenerationParams, **kwargs
) -> list[Completion]:
    """The completions with ``full_depth_nll`` filled in; ones already scored are kept as they are.

    The one step every generation path calls on a finished batch, wherever the model is loaded (the
    sweep's process, or a worker that generates remotely and returns scored completions).
    """
    todo = [i for i, c in enumerate(completions) if c.full_depth_nll is None and c.token_ids]
    if not todo:
        return list(completions)
    scores = completion_nll(loaded, [completions[i] for i in todo], params, **kwargs)
    scored = list(completions)
    for i, score in zip(todo, scores, strict=True):
        scored[i] = replace(scored[i], full_depth_nll=score)
    return scored


def _require_full_depth(loaded: LoadedModel) -> None:
    # Truncation swaps the layer list in place; scoring under it would silently score at depth k.
    if len(loaded.layers) != loaded.n_layers:
        raise RuntimeError(
            f"full_depth_nll called inside a truncation ({len(loaded.layers)} of {loaded.n_layers} layers); "
            "score outside the `truncated(...)` block"
        )


def _batch_token_nll(
    loaded: LoadedModel, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
) -> list[list[float]]:
    """One forward pass: the completion tokens all end at the right edge, so their predictions sit in
    the last ``longest + 1`` positions (the logit at position t predicts the token at t + 1)."""
    sequences = [[*p, *c] for p, c in zip(prompt_ids, completion_ids, strict=True)]
    longest = max(len(c) for c in completion_ids)
    ids, mask = left_pad(sequences, loaded.tokenizer.pad_token_id, loaded.device)
    with loaded.lock, torch.inference_mode():
        _require_full_depth(loaded)
        logits = loaded.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_for(mask),
            use_cache=False,
            logits_to_keep=longest + 1,
        ).logits[:, :-1, :]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        token_nll = -log_probs.gather(-1, ids[:, -longest:].unsqueeze(-1)).squeeze(-1).cpu()
    # Row r's completion is its last len(c) columns.
    return [token_nll[row, longest - len(c) :].tolist() for row, c in enumerate(completion_ids)]
