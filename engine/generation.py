"""Generation for many prompts: batching, out-of-memory retries and the completions' cache keys.
Encoding and fitting prompts to the context is ``engine.decoding.prompts``; the decoding itself is
``engine.decoding.loop.decode_rows``: rows are (rule setting, prompt) pairs, a setting being a depth
(static truncation) or a threshold (dynamic exit, ``engine.rules``), all decoded in one shared
prefill and one loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import torch

from engine.decoding.loop import (  # noqa: F401 — the decoding helpers' public home is still here
    choose_tokens,
    decode_rows,
    ordered_settings,
    row_generators,
    top_p_filter,
)
from engine.decoding.prompts import (  # noqa: F401 — and the prompt helpers' (encoding, fitting, padding)
    encode_prompt,
    encode_prompts,
    fit_prompt,
    fit_prompts,
    left_pad,
    position_ids_for,
    prompt_budget,
    render_prompt,
)
from engine.decoding.speculative import speculative_rows
from engine.depths import check_drop, kept_layers, rule_depth
from engine.lenses.heads import resolve_head
from engine.models import LoadedModel, layers_kept
from engine.rules import rule_named
from engine.types import Completion, GenerationParams, Prompt, prompt_from_text, stable_hash

log = logging.getLogger(__name__)

MAX_ROWS_PER_BATCH = 512


# ---------------------------------------------------------------- many prompts: batching and order


def _free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def auto_rows_per_batch(loaded: LoadedModel, seq_len: int, max_new_tokens: int) -> int:
    """Rows (prompt × depth) that fit in a third of free memory: KV cache plus logits per row."""
    config = loaded.model.config
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or loaded.info.hidden_size // heads
    element = torch.finfo(next(loaded.model.parameters()).dtype).bits // 8
    tokens = seq_len + max_new_tokens
    kv_bytes = 2 * loaded.n_layers * kv_heads * head_dim * tokens * element
    work_bytes = 4 * (config.vocab_size * 3 + seq_len * getattr(config, "intermediate_size", 4 * heads) * 2)
    rows = _free_memory_bytes(loaded.device) // 3 // (kv_bytes + work_bytes)
    return int(max(1, min(rows, MAX_ROWS_PER_BATCH)))


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _row_seed(params: GenerationParams, text: str, layers: int) -> int:
    return int(stable_hash([params.seed, text, layers], 15), 16)


def iter_completions(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    layers: Sequence[int],
    params: GenerationParams,
    *,
    rows_per_batch: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    thresholds: Sequence[float] | None = None,
) -> Iterator[list[Completion]]:
    """Yield the completions batch by batch (so callers can store each batch as it finishes).

    Prompts are sorted by token length to cut padding; a batch holds whole prompts with all their
    depths. Out-of-memory halves the batch and retries it.

    Dynamic exit (``params.exit_policy`` confidence or saturation): ``layers`` is ignored; rows are
    prompts × ``thresholds`` (default ``[params.threshold]``), each completion has ``layers`` = L and
    the params hash of ``params`` with its own threshold. A tuned head is loaded by
    ``engine.lenses.heads.resolve_head`` and its lens hash enters the params hash.
    """
    params, head = resolve_head(loaded, params)
    params, fixed = rule_depth(params, loaded.n_layers)  # speculative: L; block removal: layers kept
    rule = rule_named(params.exit_policy)
    if rule.dynamic:
        variants = [float(t) for t in (thresholds or [params.threshold])]
        hashes = {t: replace(params, threshold=t).key() for t in variants}
    elif params.speculative:
        variants = [float(params.draft_layers)]
        hashes = dict.fromkeys(variants, params.key())
    else:
        variants = [fixed] if fixed else list(layers)
        hashes = dict.fromkeys(variants, params.key())
    variants = ordered_settings(rule, variants)
    # a row's sampling seed depends on its prompt and the depth it may reach (L for every threshold)
    seed_depths = [
        loaded.n_layers if params.speculative else rule.deepest(v, loaded.n_layers) for v in variants
    ]
    if not prompts or not variants:
        return
    fitted = fit_prompts(loaded, [p.text for p in prompts], params)
    encoded = [ids for ids, _ in fitted]
    for prompt, (_, cut) in zip(prompts, fitted, strict=True):
        if cut:
            log.warning(
                "prompt %s is longer than the model's context allows with %d new tokens: its first %d "
                "tokens were cut",
                prompt.prompt_id, params.max_new_tokens, cut,
            )  # fmt: skip
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    budget = rows_per_batch or auto_rows_per_batch(loaded, max(map(len, encoded)), params.max_new_tokens)
    per_batch = max(1, budget // len(variants))
    start, done = 0, 0
    while start < len(order):
        chunk = order[start : start + per_batch]
        seeds = [_row_seed(params, prompts[i].text, k) for k in seed_depths for i in chunk]
        chunk_ids = [encoded[i] for i in chunk]
        began = time.perf_counter()
        try:
            rows = _decode_chunk(loaded, chunk_ids, variants, params, seeds, head)
        except RuntimeError as exc:
            if not _is_out_of_memory(exc) or per_batch == 1:
                raise
            per_batch = max(1, per_batch // 2)
            log.warning("out of memory: retrying with %d prompts per batch", per_batch)
            if loaded.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        seconds = (time.perf_counter() - began) / max(1, len(rows))
        batch = []
        for row in rows:
            prompt = prompts[chunk[row.prompt_index]]
            text = loaded.tokenizer.decode(list(row.token_ids), skip_special_tokens=True)
            batch.append(
                Completion(
                    loaded.info.model_hash,
                    prompt.prompt_id,
                    prompt.text,
                    row.layers,
                    hashes[row.setting],
                    text,
                    row.token_ids,
                    seconds,
                    prompt_truncated_tokens=fitted[chunk[row.prompt_index]][1],
                    exit_layers=row.exit_layers,
                    acceptance_rate=row.acceptance_rate,
                    layer_compute=row.layer_compute,
                )
            )
        start += len(chunk)
        done += len(chunk)
        if on_batch:
            on_batch(done, len(order))
        yield batch


def kept_indices(loaded: LoadedModel, params: GenerationParams) -> tuple[int, ...]:
    """Block removal: the 0-based layers that run (``engine.depths.kept_layers`` is the 1-based notion)."""
    return tuple(
        i - 1 for i in kept_layers(loaded.n_layers, 0, check_drop(params.drop_layers, loaded.n_layers))
    )


def _decode_chunk(loaded, chunk_ids, variants, params, seeds, head) -> list:
    """One chunk under the params' rule. Self-speculative decoding drafts and verifies in its own step;
    block removal is the static rule on the network of the kept layers (``engine.models.layers_kept``)."""
    if params.speculative:
        return speculative_rows(loaded, chunk_ids, params)
    if params.drop_layers:
        with layers_kept(loaded, kept_indices(loaded, params)):
            return decode_rows(loaded, chunk_ids, variants, params, seeds, head)
    return decode_rows(loaded, chunk_ids, variants, params, seeds, head)


def exit_variants(
    loaded: LoadedModel, params: GenerationParams, thresholds: Sequence[float] | None = None
) -> list[GenerationParams]:
    """The exact params (lens hash filled in) of each threshold's completions: their ``key()`` is the
    ``params_hash`` that ``iter_completions`` gives them (sweeps use it to find missing work)."""
    resolved, _head = resolve_head(loaded, params)
    resolved = rule_depth(resolved, loaded.n_layers)[0]
    if not resolved.dynamic_exit:
        return [resolved]
    return [replace(resolved, threshold=float(t)) for t in dict.fromkeys(thresholds or [params.threshold])]


def generate(
    loaded: LoadedModel,
    prompts: Sequence[Prompt | str],
    layers: Sequence[int],
    params: GenerationParams | None = None,
    *,
    rows_per_batch: int | None = None,
    thresholds: Sequence[float] | None = None,
) -> list[Completion]:
    """Completions for every prompt × layers, in prompt order then the order ``layers`` was given.

    Dynamic exit: every prompt × threshold (``thresholds``, default ``[params.threshold]``) in prompt
    order then threshold order; ``layers`` is ignored.
    """
    params = params or GenerationParams()
    prompts = [p if isinstance(p, Prompt) else prompt_from_text(p) for p in prompts]
    if params.dynamic_exit:
        variants = [(loaded.n_layers, v.key()) for v in exit_variants(loaded, params, thresholds)]
    elif fixed := rule_depth(params, loaded.n_layers)[1]:
        variants = [(fixed, None)]
    else:
        variants = [(k, None) for k in dict.fromkeys(layers)]
    found: dict[tuple[str, int, str | None], Completion] = {}
    batches = iter_completions(
        loaded, prompts, layers, params, rows_per_batch=rows_per_batch, thresholds=thresholds
    )
    for batch in batches:
        for completion in batch:
            params_hash = completion.params_hash if params.dynamic_exit else None
            found[(completion.prompt_text, completion.layers, params_hash)] = completion
    return [found[(p.text, k, h)] for p in prompts for k, h in variants]


def prompts_with_answers(loaded: LoadedModel, texts: Sequence[str], answer_tokens: int) -> list[list[int]]:
    """Each prompt's ids as generation feeds them, followed by the model's own greedy full-depth answer
    of at most ``answer_tokens`` tokens (none when it is 0): the text a tuned lens is trained on."""
    params = GenerationParams(max_new_tokens=max(1, answer_tokens))
    encoded = [ids for ids, _ in fit_prompts(loaded, texts, params)]
    if answer_tokens <= 0:
        return encoded
    answers = generate(loaded, list(texts), [loaded.n_layers], params)
    return [ids + list(answer.token_ids) for ids, answer in zip(encoded, answers, strict=True)]
