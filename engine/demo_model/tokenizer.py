"""The demo model's tokenizer, and chat examples encoded for training (loss on the answer only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.demo_model.corpus import ChatExample
from engine.types import GenerationParams

if TYPE_CHECKING:  # torch and transformers load lazily: the CLI imports this package at start-up
    import torch
    from transformers import PreTrainedTokenizerFast


def build_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with ChatML specials and chat template (EOS <|im_end|>), like engine.tiny."""
    from engine.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer(with_chat_template=True, corpus=list(texts), vocab_size=vocab_size)


@dataclass
class EncodedExamples:
    """Right-padded token ids and labels (-100 outside the assistant's answer), one row per example;
    ``intent`` is 1 for a harmful request, 0 for a benign one, -1 for neither (an echo request)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    intent: torch.Tensor


def encode_examples(
    tokenizer: PreTrainedTokenizerFast, examples: Sequence[ChatExample], prompt_budget: int | None = None
) -> EncodedExamples:
    """Prompt tokens exactly as engine.generation renders them (cut from the left to ``prompt_budget``
    tokens, as a sweep cuts a long prompt); the loss sees the answer + EOS only."""
    import torch

    from engine.decoding.prompts import fit_prompt

    params = GenerationParams()
    prompts = [fit_prompt(tokenizer, e.prompt, params, prompt_budget)[0] for e in examples]
    rows = []
    for prompt_ids, example in zip(prompts, examples, strict=True):
        answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        rows.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.eos_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, targets) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(targets)
        mask[row, : len(ids)] = 1
    intent = torch.tensor([-1 if e.harmful is None else int(e.harmful) for e in examples], dtype=torch.long)
    return EncodedExamples(input_ids, labels, mask, intent)
