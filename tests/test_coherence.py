"""Full-depth NLL of a completion: checked against an independent unpadded per-row computation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny_model

from engine.coherence import completion_nll, full_depth_nll, full_depth_token_nll
from engine.generation import generate
from engine.models import from_objects, truncated
from engine.types import GenerationParams

PROMPTS = [
    "Write a poem about the sea.",
    "How do I bake bread? Mix flour, water, salt and yeast, then bake it for a long time.",
    "Hi",
    "What is the capital of France?",
]


@pytest.fixture(scope="module")
def loaded(tiny_tokenizer):
    return from_objects(build_tiny_model("llama", n_layers=4, seed=3), tiny_tokenizer)


def reference_nll(loaded, prompt: str, completion: list[int], system_prompt: str | None = None) -> float:
    """One row, no padding, prompt rendered straight from the chat template, HF's own cross-entropy."""
    messages = [{"role": "user", "content": prompt}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    text = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[*prompt_ids, *completion]])
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits[0]
    predicted = logits[len(prompt_ids) - 1 : -1]
    return float(torch.nn.functional.cross_entropy(predicted.float(), torch.tensor(completion)))


def random_completions(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = [1, 7, 3, 12, 5, 9][:n]
    return [torch.randint(3, vocab, (length,), generator=generator).tolist() for length in lengths]


@pytest.mark.parametrize("system_prompt", [None, "Be brief."])
@pytest.mark.parametrize("rows_per_batch", [1, 3, 16])
def test_batched_nll_matches_an_unpadded_per_row_computation(loaded, system_prompt, rows_per_batch):
    completions = random_completions(len(PROMPTS), loaded.model.config.vocab_size)
    params = GenerationParams(system_prompt=system_prompt)
    got = full_depth_nll(loaded, PROMPTS, completions, params, rows_per_batch=rows_per_batch)
    expected = [reference_nll(loaded, p, c, system_prompt) for p, c in zip(PROMPTS, completions, strict=True)]
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert all(x > 0 for x in got)


def test_empty_completion_scores_none_and_others_are_unaffected(loaded):
    completions = random_completions(2, loaded.model.config.vocab_size)
    got = full_depth_nll(loaded, [PROMPTS[0], PROMPTS[1], PROMPTS[2]], [completions[0], [], completions[1]],
                         GenerationParams())  # fmt: skip
    assert got[1] is None
    assert got[0] == pytest.approx(reference_nll(loaded, PROMPTS[0], completions[0]), rel=1e-4)
    assert got[2] == pytest.approx(reference_nll(loaded, PROMPTS[2], completions[1]), rel=1e-4)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        full_depth_nll(loaded, PROMPTS[:2], completions[:1], GenerationParams())


def test_refuses_to_score_inside_a_truncation(loaded):
    completions = random_completions(3, loaded.model.config.vocab_size)
    full = full_depth_nll(loaded, PROMPTS[:3], completions, GenerationParams())
    with truncated(loaded, 1), pytest.raises(RuntimeError, match="inside a truncation"):
        full_depth_nll(loaded, PROMPTS[:3], completions, GenerationParams())
    assert full_depth_nll(loaded, PROMPTS[:3], completions, GenerationParams()) == full  # restored


def test_the_models_own_greedy_text_is_cheaper_than_random_tokens(loaded):
    # Greedy picks the full model's most likely token at every step, so its NLL is far below random
    # tokens' (about log(vocab) on a random model): the score ranks fluency as the model sees it.
    params = GenerationParams(max_new_tokens=12)
    own = generate(loaded, PROMPTS, [loaded.n_layers], params)
    own_nll = completion_nll(loaded, own, params)
    noise = random_completions(len(PROMPTS), loaded.model.config.vocab_size, seed=1)
    noise_nll = full_depth_nll(loaded, PROMPTS, noise, params)
    for mine, random_ in zip(own_nll, noise_nll, strict=True):
        assert mine < random_
    assert max(own_nll) < math.log(loaded.model.config.vocab_size) < min(noise_nll) + 2


def test_per_token_nll_matches_the_reference_token_by_token(loaded):
    completions = random_completions(3, loaded.model.config.vocab_size, seed=2)
    got = full_depth_token_nll(
        loaded, PROMPTS[:3], [completions[1], [], completions[3 - 1]], GenerationParams()
    )
    assert got[1] == []
    for prompt, completion, values in (
        (PROMPTS[0], completions[1], got[0]),
        (PROMPTS[2], completions[2], got[2]),
    ):
        assert len(values) == len(completion)
        # The reference mean over the first i + 1 tokens, times i + 1, is their cumulative NLL.
        expected = [
            reference_nll(loaded, prompt, completion[: i + 1]) * (i + 1) for i in range(len(completion))
        ]
        cumulative = [sum(values[: i + 1]) for i in range(len(values))]
        assert cumulative == pytest.approx(expected, rel=1e-4, abs=1e-4)
