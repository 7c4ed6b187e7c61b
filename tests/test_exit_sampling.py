"""Sampled (temperature > 0) early exit: every row draws from its own seeded generator, so a prompt's
sampled tokens and exit layers do not depend on what shares its batch (other prompts, other thresholds,
batch size), like static sampling; and a threshold no token reaches samples the full-depth completion."""

from __future__ import annotations

import pytest

from engine.generation import generate, iter_completions
from engine.models import from_objects
from engine.tiny import build_tiny_model
from engine.types import GenerationParams, prompt_from_text

PROMPTS = ["Write a poem about the sea", "Hello", "Bake bread", "How do I pick a lock?"]
THRESHOLDS = [0.9, 0.3, 0.05]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def loaded(request, tiny_tokenizer):
    return from_objects(build_tiny_model(request.param, n_layers=4), tiny_tokenizer)


def sampled(policy: str = "confidence", seed: int = 7, **kw) -> GenerationParams:
    return GenerationParams(
        max_new_tokens=8, temperature=1.0, top_p=0.95, seed=seed, exit_policy=policy, threshold=0.3, **kw
    )


def rows(completions) -> dict[tuple[str, str], tuple]:
    return {(c.prompt_text, c.params_hash): (c.token_ids, c.exit_layers) for c in completions}


@pytest.mark.parametrize("policy", ["confidence", "saturation"])
def test_a_sampled_exit_row_does_not_depend_on_its_batch(loaded, policy):
    params = sampled(policy, min_layers=1)
    together = rows(generate(loaded, PROMPTS, [], params, thresholds=THRESHOLDS))
    for text in ("Hello", "How do I pick a lock?"):
        alone = rows(generate(loaded, [text], [], params, thresholds=[0.3]))
        assert alone.items() <= together.items(), text  # same tokens and exit layers as in the big batch
    one_by_one = {}
    for batch in iter_completions(  # one prompt (all thresholds) per batch, prompts in another order
        loaded, [prompt_from_text(t) for t in reversed(PROMPTS)], [], params, rows_per_batch=1,
        thresholds=list(reversed(THRESHOLDS)),
    ):  # fmt: skip
        one_by_one |= rows(batch)
    assert one_by_one == together
    assert rows(generate(loaded, PROMPTS, [], params, thresholds=THRESHOLDS)) == together  # reproducible


def test_sampling_really_samples_and_the_seed_matters(loaded):
    params = sampled(min_layers=1)
    drawn = rows(generate(loaded, PROMPTS, [], params, thresholds=THRESHOLDS))
    other_seed = rows(generate(loaded, PROMPTS, [], sampled(seed=8, min_layers=1), thresholds=THRESHOLDS))
    greedy = GenerationParams(max_new_tokens=8, exit_policy="confidence", threshold=0.3, min_layers=1)
    argmax = generate(loaded, PROMPTS, [], greedy, thresholds=THRESHOLDS)
    assert [tokens for tokens, _ in drawn.values()] != [tokens for tokens, _ in other_seed.values()]
    assert sorted(tokens for tokens, _ in drawn.values()) != sorted(c.token_ids for c in argmax)


def test_an_unreachable_threshold_samples_the_full_depth_completion(loaded):
    """No token can reach confidence 1.5: every token exits at L, and the row's seed is the full-depth
    row's seed, so the sampled answer is the static full-depth sample, token for token."""
    exit_params = sampled(min_layers=1)
    static = GenerationParams(max_new_tokens=8, temperature=1.0, top_p=0.95, seed=7)
    exited = generate(loaded, PROMPTS, [], exit_params, thresholds=[1.5])
    full = generate(loaded, PROMPTS, [loaded.n_layers], static)
    assert [c.token_ids for c in exited] == [c.token_ids for c in full]
    assert all(set(c.exit_layers) == {loaded.n_layers} for c in exited)
