"""Decoding details: sampling is a true categorical draw, reproducible and independent of the batch."""

from __future__ import annotations

import torch

from engine.generation import (
    choose_tokens,
    generate,
    left_pad,
    position_ids_for,
    row_generators,
    top_p_filter,
)
from engine.models import from_objects
from engine.tiny import build_tiny_model
from engine.types import GenerationParams


def test_sampling_frequencies_match_softmax_with_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    params = GenerationParams(temperature=0.7)
    draws = 20000
    generators = row_generators(range(draws), "cpu")
    tokens = choose_tokens(logits.expand(draws, -1), params, generators)
    observed = torch.bincount(tokens, minlength=4).double() / draws
    expected = torch.softmax(logits / 0.7, dim=-1).double()
    assert torch.allclose(observed, expected, atol=0.015), (observed, expected)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(top_p_filter(probs.log(), 0.8))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    assert torch.isfinite(top_p_filter(probs.log(), 0.4)).tolist() == [[True, False, False, False]]
    tokens = choose_tokens(probs.log().expand(500, -1), GenerationParams(temperature=1.0, top_p=0.8),
                           row_generators(range(500), "cpu"))  # fmt: skip
    assert set(tokens.tolist()) == {0, 1}


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -2.0], [5.0, 4.9, 0.0]])
    assert choose_tokens(logits, GenerationParams(), None).tolist() == [1, 0]


def test_sampled_completion_does_not_depend_on_its_batch(tiny_tokenizer):
    loaded = from_objects(build_tiny_model("llama", n_layers=4), tiny_tokenizer)
    params = GenerationParams(max_new_tokens=6, temperature=1.0, seed=7)
    alone = generate(loaded, ["Hello"], [4, 2], params)
    together = generate(loaded, ["Write a poem about the sea", "Hello", "Bake bread"], [4, 3, 2], params)
    by_key = {(c.prompt_text, c.layers): c.token_ids for c in together}
    assert [c.token_ids for c in alone] == [by_key[("Hello", 4)], by_key[("Hello", 2)]]
    assert [c.token_ids for c in generate(loaded, ["Hello"], [4, 2], params)] == [c.token_ids for c in alone]
    other_seed = generate(
        loaded, ["Hello"], [4, 2], GenerationParams(max_new_tokens=6, temperature=1.0, seed=8)
    )
    assert [c.token_ids for c in other_seed] != [c.token_ids for c in alone]


def test_left_padding_and_positions():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids_for(mask).tolist() == [[0, 1, 2], [1, 1, 0]]
