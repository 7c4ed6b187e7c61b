"""Batched, depth-shared generation: many prompts × many truncation depths in one decoding loop.

Rows are (depth, prompt) pairs sorted deepest first. The prompt prefill runs once per prompt up to the
deepest depth (every depth's prefix is the same computation); its KV cache is then replicated per
layer only for the rows whose depth includes that layer, and one decoding loop runs every row at its
own depth (``engine.models.depth_routed``): each step reads every layer's weights once for all depths.

Dynamic exit (``generate_rows_exit``): rows are (threshold, prompt) pairs that all keep L layers; each
token exits at the layer its policy picks (``engine.exits``: rule, heads, CALM state propagation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from engine.architectures import context_length
from engine.depths import check_drop, kept_layers, rule_depth
from engine.exits import (
    RAW_HEAD,
    ExitHead,
    ExitTracker,
    exit_hooks,
    first_token_exits,
    head_logits,
    last_position_taps,
    resolve_head,
    translated_final_norm,
)
from engine.models import LoadedModel, depth_routed, layers_kept, reroute, truncated
from engine.speculative import speculate
from engine.types import Completion, GenerationParams, Prompt, prompt_from_text, stable_hash

log = logging.getLogger(__name__)

MAX_ROWS_PER_BATCH = 512


def render_prompt(tokenizer, text: str, params: GenerationParams) -> tuple[str, bool]:
    """The exact string fed to the model and whether the tokenizer should add its special tokens.

    With a chat template the template owns the special tokens; without one (or when switched off) the
    text is tokenized as-is with the tokenizer's defaults.
    """
    if params.chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        if params.system_prompt:
            messages.insert(0, {"role": "system", "content": params.system_prompt})
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return rendered, False
    return text, True


def encode_prompt(tokenizer, text: str, params: GenerationParams) -> list[int]:
    rendered, add_special = render_prompt(tokenizer, text, params)
    return list(tokenizer(rendered, add_special_tokens=add_special)["input_ids"])


def encode_prompts(tokenizer, texts: Sequence[str], params: GenerationParams) -> list[list[int]]:
    return [encode_prompt(tokenizer, text, params) for text in texts]


def prompt_budget(loaded: LoadedModel, params: GenerationParams) -> int | None:
    """Prompt tokens that fit beside ``max_new_tokens`` in the model's context (None: no known limit).
    Raises ParamsError when the answer alone does not fit."""
    context = context_length(loaded.model.config)
    params.check_fits(context)
    return None if context is None else context - params.max_new_tokens


def fit_prompt(tokenizer, text: str, params: GenerationParams, budget: int | None) -> tuple[list[int], int]:
    """The prompt's token ids, cut from the left to ``budget`` tokens, and how many tokens were cut.

    The user's text loses its oldest tokens; the chat template (system prompt, role markers, the
    generation prompt) stays whole, because a model without its template answers something else.
    Deterministic in (text, tokenizer, params), so completion keys need no extra part.
    """
    ids = encode_prompt(tokenizer, text, params)
    if budget is None or len(ids) <= budget:
        return ids, 0
    full = len(ids)
    text_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    drop = full - budget
    for _ in range(4):  # re-tokenising the cut text can merge differently: cut a little more and retry
        ids = encode_prompt(
            tokenizer, tokenizer.decode(text_ids[drop:]) if drop < len(text_ids) else "", params
        )
        if len(ids) <= budget:
            return ids, full - len(ids)
        drop += len(ids) - budget
    return ids[-budget:], full - budget  # the template alone is longer than the budget


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def position_ids_for(mask: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, as HF generate does under left padding."""
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill(mask == 0, 1)


# ---------------------------------------------------------------- token choice


def _row_generators(seeds: Sequence[int], device) -> list[torch.Generator]:
    generators = []
    for seed in seeds:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        generators.append(generator)
    return generators


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return logits
    ordered, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
    drop_sorted = cumulative - torch.softmax(ordered, dim=-1) >= top_p  # always keeps the top token
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def choose_tokens(
    logits: torch.Tensor, params: GenerationParams, generators: list[torch.Generator] | None
) -> torch.Tensor:
    """Greedy argmax, or a categorical sample via the Gumbel-max trick with per-row noise.

    Each row draws its noise from its own generator (seeded by seed, prompt and depth), so a
    sampled completion does not depend on which other rows share its batch.
    """
    logits = logits.float()
    if params.greedy:
        return logits.argmax(dim=-1)
    scaled = _top_p_filter(logits / params.temperature, params.top_p)
    noise = torch.stack(
        [torch.rand(scaled.shape[-1], generator=g, device=scaled.device) for g in generators]
    ).clamp_(1e-20, 1.0)
    return (scaled - torch.log(-torch.log(noise))).argmax(dim=-1)


# ---------------------------------------------------------------- one batch of prompts × depths


@dataclass(frozen=True)
class _RowOutput:
    prompt_index: int
    layers: int
    token_ids: tuple[int, ...]
    exit_layers: tuple[int, ...] = ()  # one per token; empty means all at ``layers``
    threshold: float = 0.0  # dynamic exit: the row's threshold
    acceptance_rate: float | None = None  # speculative decoding: drafts accepted / drafted
    layer_compute: float | None = None  # speculative decoding: layer passes per generated token


def _prefill_shared(
    loaded: LoadedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    depths_desc: Sequence[int],
    head: ExitHead = RAW_HEAD,
):
    """One prefill per prompt up to the deepest depth; next-token logits at every depth's exit."""
    from transformers import DynamicCache

    exits: dict[int, torch.Tensor] = {}
    hooks = []
    for k in depths_desc:

        def keep_exit(_module, _inputs, output, k=k):
            hidden = output[0] if isinstance(output, tuple) else output
            exits[k] = hidden[:, -1, :]

        hooks.append(loaded.layers[k - 1].register_forward_hook(keep_exit))
    try:
        with truncated(loaded, depths_desc[0]):
            cache = DynamicCache(config=loaded.model.config)
            loaded.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids_for(mask),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
    finally:
        for hook in hooks:
            hook.remove()
    logits = torch.cat([head_logits(loaded, head, exits[k], k) for k in depths_desc], dim=0)
    return cache, logits


def _replicate_cache(cache, n_prompts: int, depths_desc: Sequence[int], device) -> None:
    """Layer i keeps one copy of each prompt's keys/values per depth group that includes layer i."""
    for layer_index, cache_layer in enumerate(cache.layers):
        groups = sum(1 for k in depths_desc if k > layer_index)
        if groups > 1:
            cache_layer.batch_select_indices(torch.arange(n_prompts, device=device).repeat(groups))


def _cut_at_eos(tokens: list[int], eos_ids: set[int]) -> tuple[int, ...]:
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return tuple(tokens[: position + 1])
    return tuple(tokens)


@dataclass
class _LiveRows:
    """The rows still decoding. Rows that hit EOS are dropped (from caches too) to save their compute."""

    origin: torch.Tensor  # index of each live row in the original batch
    row_layers: list[int]  # depth of each live row, deepest first
    mask: torch.Tensor
    positions: torch.Tensor
    generators: list[torch.Generator] | None

    def keep_only(self, keep: list[int], loaded: LoadedModel, cache) -> None:
        index = torch.tensor(keep, device=self.mask.device)
        for layer_index, cache_layer in enumerate(cache.layers):
            in_layer = sum(1 for k in self.row_layers if k > layer_index)
            cache_layer.batch_select_indices(index[index < in_layer])
        self.origin, self.mask, self.positions = self.origin[index], self.mask[index], self.positions[index]
        self.row_layers = [self.row_layers[i] for i in keep]
        if self.generators is not None:
            self.generators = [self.generators[i] for i in keep]
        reroute(loaded, self.row_layers)


def _token_table(
    steps: Sequence[tuple[torch.Tensor, torch.Tensor]], n_rows: int, pad_id: int, device
) -> torch.Tensor:
    """Rows × steps actually taken (not × max_new_tokens): each step's tokens go to the rows still live."""
    out = torch.full((n_rows, len(steps)), pad_id, dtype=torch.long, device=device)
    for step, (rows, tokens) in enumerate(steps):
        out[rows, step] = tokens
    return out


def generate_rows(
    loaded: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    layers: Sequence[int],
    params: GenerationParams,
    row_seeds: Sequence[int] | None = None,
    head: ExitHead = RAW_HEAD,
) -> list[_RowOutput]:
    """All ``layers`` for all prompts in one shared prefill and one decoding loop (static exit)."""
    depths_desc = sorted(set(layers), reverse=True)
    n_prompts, device = len(prompt_ids), loaded.device
    pad_id = loaded.tokenizer.pad_token_id
    eos_ids = set(loaded.eos_token_ids)
    ids, mask = left_pad(prompt_ids, pad_id, device)
    row_layers = [k for k in depths_desc for _ in range(n_prompts)]
    generators = (
        None if params.greedy else _row_generators(row_seeds or [params.seed] * len(row_layers), device)
    )
    eos_tensor = torch.tensor(sorted(eos_ids), device=device)
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows, tokens) per step: grows with the answer
    with loaded.lock, torch.inference_mode():
        cache, logits = _prefill_shared(loaded, ids, mask, depths_desc, head)
        with depth_routed(loaded, row_layers), translated_final_norm(loaded, head, lambda: live.row_layers):
            _replicate_cache(cache, n_prompts, depths_desc, device)
            mask = mask.repeat(len(depths_desc), 1)
            origin = torch.arange(len(row_layers), device=device)
            live = _LiveRows(origin, row_layers, mask, position_ids_for(mask)[:, -1:], generators)
            for step in range(params.max_new_tokens):
                chosen = choose_tokens(logits, params, live.generators)
                steps.append((live.origin, chosen))
                finished = torch.isin(chosen, eos_tensor)
                n_finished = int(finished.sum())  # the one host sync per step: the stopping check
                if step == params.max_new_tokens - 1 or n_finished == len(live.row_layers):
                    break
                if n_finished:
                    keep = (~finished).nonzero().squeeze(1)
                    live.keep_only(keep.tolist(), loaded, cache)
                    chosen = chosen[keep]
                live.mask = torch.cat([live.mask, live.mask.new_ones((live.mask.shape[0], 1))], dim=1)
                live.positions = live.positions + 1
                logits = loaded.model(
                    input_ids=chosen[:, None],
                    attention_mask=live.mask,
                    position_ids=live.positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                ).logits[:, -1, :]
    generated = _token_table(steps, len(row_layers), pad_id, device).tolist()
    return [
        _RowOutput(row % n_prompts, row_layers[row], _cut_at_eos(tokens, eos_ids))
        for row, tokens in enumerate(generated)
    ]


# ---------------------------------------------------------------- dynamic exit (engine.exits)


def _prefill_full(loaded: LoadedModel, ids: torch.Tensor, mask: torch.Tensor):
    """The prompt at full depth: its KV cache and its last position's residuals 0..L."""
    from transformers import DynamicCache

    found: dict[int, torch.Tensor] = {}
    cache = DynamicCache(config=loaded.model.config)
    with last_position_taps(loaded, found):
        loaded.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_for(mask),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    return cache, [found[k] for k in range(loaded.n_layers + 1)]


def generate_rows_exit(
    loaded: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    thresholds: Sequence[float],
    params: GenerationParams,
    row_seeds: Sequence[int] | None = None,
    head: ExitHead = RAW_HEAD,
) -> list[_RowOutput]:
    """Per-token early exit (``params.exit_policy``) for all prompts × ``thresholds`` in one loop.

    Rows are (threshold, prompt) pairs, threshold-major. Every row keeps all L layers' caches (exited
    tokens' keys/values come from state propagation, see ``engine.exits``); the exit rule runs as a
    batch-wide mask after each layer, and the only host sync per step is the stopping check.
    """
    n_prompts, device, n_layers = len(prompt_ids), loaded.device, loaded.n_layers
    pad_id = loaded.tokenizer.pad_token_id
    eos_ids = set(loaded.eos_token_ids)
    groups = len(thresholds)
    ids, mask = left_pad(prompt_ids, pad_id, device)
    row_thresholds = torch.tensor(
        [float(t) for t in thresholds for _ in range(n_prompts)], dtype=torch.float32, device=device
    )
    n_rows = row_thresholds.shape[0]
    generators = None if params.greedy else _row_generators(row_seeds or [params.seed] * n_rows, device)
    eos_tensor = torch.tensor(sorted(eos_ids), device=device)
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows, tokens) per step: grows with the answer
    step_layers: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows, exit layer) per step
    dtype = next(loaded.model.parameters()).dtype
    with loaded.lock, torch.inference_mode():
        cache, residuals = _prefill_full(loaded, ids, mask)
        tracker = ExitTracker.start(loaded, head, params, row_thresholds, dtype)
        logits = first_token_exits(loaded, tracker, [r.repeat(groups, 1) for r in residuals])
        exit_layer = tracker.exit_layer
        _replicate_cache(cache, n_prompts, [n_layers] * groups, device)
        mask = mask.repeat(groups, 1)
        positions = position_ids_for(mask)[:, -1:]
        origin = torch.arange(n_rows, device=device)
        step: dict[str, ExitTracker] = {}
        with exit_hooks(loaded, step):
            for index in range(params.max_new_tokens):
                chosen = choose_tokens(logits, params, generators)
                steps.append((origin, chosen))
                step_layers.append((origin, exit_layer))
                finished = torch.isin(chosen, eos_tensor)
                n_finished = int(finished.sum())  # the one host sync per step: the stopping check
                if index == params.max_new_tokens - 1 or n_finished == origin.shape[0]:
                    break
                if n_finished:
                    keep = (~finished).nonzero().squeeze(1)
                    for cache_layer in cache.layers:
                        cache_layer.batch_select_indices(keep)
                    origin, mask, positions = origin[keep], mask[keep], positions[keep]
                    row_thresholds, chosen = row_thresholds[keep], chosen[keep]
                    if generators is not None:
                        generators = [generators[i] for i in keep.tolist()]
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                positions = positions + 1
                step["tracker"] = ExitTracker.start(loaded, head, params, row_thresholds, dtype)
                logits = loaded.model(
                    input_ids=chosen[:, None],
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                ).logits[:, -1, :]
                exit_layer = step["tracker"].exit_layer
    generated = _token_table(steps, n_rows, pad_id, device).tolist()
    layer_rows = _token_table(step_layers, n_rows, 0, device).tolist()
    rows = []
    for row, tokens in enumerate(generated):
        token_ids = _cut_at_eos(tokens, eos_ids)
        threshold = float(thresholds[row // n_prompts])
        exits = tuple(layer_rows[row][: len(token_ids)])
        rows.append(_RowOutput(row % n_prompts, n_layers, token_ids, exits, threshold))
    return rows


# ---------------------------------------------------------------- self-speculative (engine.speculative)


def generate_rows_speculative(
    loaded: LoadedModel, prompt_ids: Sequence[Sequence[int]], params: GenerationParams
) -> list[_RowOutput]:
    """Greedy self-speculative decoding for all prompts in one batch: every token is the full model's,
    each row records its drafts' acceptance rate and the layer passes spent per generated token."""
    ids, mask = left_pad(prompt_ids, loaded.tokenizer.pad_token_id, loaded.device)
    eos_ids, n_layers = set(loaded.eos_token_ids), loaded.n_layers
    rows = []
    for index, tally in enumerate(speculate(loaded, ids, mask, position_ids_for(mask), params)):
        token_ids = _cut_at_eos(tally.tokens, eos_ids)
        rows.append(
            _RowOutput(
                index,
                n_layers,
                token_ids,
                (n_layers,) * len(token_ids),  # every token is the full model's
                acceptance_rate=tally.accepted / tally.drafted if tally.drafted else None,
                layer_compute=tally.passes / max(1, len(token_ids)),
            )
        )
    return rows


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
    ``engine.exits.resolve_head`` and its lens hash enters the params hash.
    """
    params, head = resolve_head(loaded, params)
    params, fixed = rule_depth(params, loaded.n_layers)
    if params.dynamic_exit:
        variants = list(dict.fromkeys(float(t) for t in (thresholds or [params.threshold])))
        hashes = {t: replace(params, threshold=t).key() for t in variants}
        seed_depths = [loaded.n_layers] * len(variants)
    else:
        variants = [fixed] if fixed else list(dict.fromkeys(layers))
        hashes = dict.fromkeys(variants, params.key())
        seed_depths = sorted(set(variants), reverse=True)
    if not prompts or not variants:
        return
    budget = prompt_budget(loaded, params)
    fitted = [fit_prompt(loaded.tokenizer, p.text, params, budget) for p in prompts]
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
            rows = _generate_chunk(loaded, chunk_ids, variants, params, seeds, head)
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
                    hashes[row.threshold if params.dynamic_exit else row.layers],
                    text,
                    row.token_ids,
                    seconds,
                    prompt_truncated_tokens=fitted[chunk[row.prompt_index]][1],
                    exit_layers=row.exit_layers or (row.layers,) * len(row.token_ids),
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


def _generate_chunk(loaded, chunk_ids, variants, params, seeds, head) -> list[_RowOutput]:
    """One chunk of prompts under the params' rule: dynamic exit, speculative, block removal, truncation."""
    if params.dynamic_exit:
        return generate_rows_exit(loaded, chunk_ids, variants, params, seeds, head)
    if params.speculative:
        return generate_rows_speculative(loaded, chunk_ids, params)
    if params.drop_layers:
        with layers_kept(loaded, kept_indices(loaded, params)):
            return generate_rows(loaded, chunk_ids, variants, params, seeds, head)
    return generate_rows(loaded, chunk_ids, variants, params, seeds, head)


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
