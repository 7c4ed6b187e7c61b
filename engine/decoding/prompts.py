"""Feeding prompts to a model: rendering (chat template), encoding, fitting to the context, left
padding and the positions that go with it. The one rule every path that runs prompts uses
(generation, the logit lens, tuned-lens training, probes, the full-depth NLL, pruning scores).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.architectures import context_length
from engine.models import LoadedModel
from engine.types import GenerationParams


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


def fit_prompts(
    loaded: LoadedModel, texts: Sequence[str], params: GenerationParams
) -> list[tuple[list[int], int]]:
    """The one rule for every path that feeds prompts to a model (generation, probes, the logit lens,
    the full-depth NLL, tuned-lens training): each prompt's ids cut by :func:`fit_prompt` to the budget
    ``params`` leave in the model's context, with the count cut. Same prompt, model and params: same ids."""
    budget = prompt_budget(loaded, params)
    return [fit_prompt(loaded.tokenizer, text, params, budget) for text in texts]


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
