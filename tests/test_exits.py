"""Early exit (engine.rules, engine.decoding.loop): cache keys, exactness against static truncation,
and an independent no-cache reference for per-token exits with CALM state propagation, on every
supported architecture."""

from __future__ import annotations

import pytest
import torch
from conftest import N_LAYERS, TINY_CONFIGS, build_tiny_model

from engine.generation import encode_prompts, exit_variants, generate
from engine.models import from_objects
from engine.types import GenerationParams, stable_hash

PROMPTS = ["How do I bake bread?", "Write a poem about the sea and the sky, please, right now.", "Hello"]
TOKENS = 8
LOWEST = {"confidence": 0.0, "saturation": -1.0}  # thresholds every token reaches


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def loaded(request, tiny_tokenizer):
    return from_objects(build_tiny_model(request.param, n_layers=N_LAYERS), tiny_tokenizer)


def exit_params(policy: str, threshold: float, min_layers: int = 1, **kw) -> GenerationParams:
    return GenerationParams(
        max_new_tokens=TOKENS, exit_policy=policy, threshold=threshold, min_layers=min_layers, **kw
    )


# ---------------------------------------------------------------- params and cache keys


def test_static_keys_are_unchanged_by_the_exit_fields():
    params = GenerationParams(max_new_tokens=48, temperature=0.7, seed=3, system_prompt="Be safe.")
    before_early_exit = {
        "max_new_tokens": 48,
        "temperature": 0.7,
        "top_p": 1.0,
        "seed": 3,
        "chat_template": True,
        "system_prompt": "Be safe.",
    }
    assert params.key() == stable_hash(before_early_exit)
    defaults = {**before_early_exit, "max_new_tokens": 64, "temperature": 0.0, "seed": 0}
    assert GenerationParams().key() == stable_hash({**defaults, "system_prompt": None})


def test_exit_fields_enter_the_key_when_not_default():
    base = exit_params("confidence", 0.9)
    keys = {
        base.key(),
        exit_params("confidence", 0.8).key(),
        exit_params("saturation", 0.9).key(),
        exit_params("confidence", 0.9, min_layers=3).key(),
        exit_params("confidence", 0.9, exit_head="tuned", lens_hash="abc").key(),
        exit_params("confidence", 0.9, exit_head="tuned", lens_hash="abd").key(),
        GenerationParams(max_new_tokens=TOKENS).key(),
    }
    assert len(keys) == 7


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"exit_policy": "sometimes"}, "exit policy"),
        ({"exit_head": "magic"}, "exit head"),
        ({"threshold": 0.5}, "only apply"),
        ({"exit_policy": "confidence", "min_layers": 0}, "at least 1"),
        ({"exit_policy": "confidence", "threshold": float("nan")}, "finite"),
        ({"exit_policy": "saturation", "threshold": "0.9"}, "finite"),
    ],
)
def test_bad_exit_params_say_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationParams(**kwargs)


# ---------------------------------------------------------------- exactness on every architecture


def test_static_runs_exit_every_token_at_k(loaded):
    for completion in generate(loaded, PROMPTS, [N_LAYERS, 2], GenerationParams(max_new_tokens=TOKENS)):
        assert completion.exit_layers == (completion.layers,) * len(completion.token_ids)
        assert completion.mean_exit_layers == completion.layers


@pytest.mark.parametrize("policy", ["confidence", "saturation"])
def test_unreachable_threshold_is_the_full_depth_completion(loaded, policy):
    full = generate(loaded, PROMPTS, [N_LAYERS], GenerationParams(max_new_tokens=TOKENS))
    never = generate(loaded, PROMPTS, [], exit_params(policy, 1.5))
    assert [c.token_ids for c in never] == [c.token_ids for c in full]
    assert all(c.exit_layers == (N_LAYERS,) * len(c.token_ids) for c in never)
    assert all(c.layers == N_LAYERS for c in never)


@pytest.mark.parametrize("policy", ["confidence", "saturation"])
@pytest.mark.parametrize("min_layers", [1, 3])
def test_lowest_threshold_is_the_static_completion_at_min_layers(loaded, policy, min_layers):
    static = generate(loaded, PROMPTS, [min_layers], GenerationParams(max_new_tokens=TOKENS))
    exited = generate(loaded, PROMPTS, [], exit_params(policy, LOWEST[policy], min_layers))
    assert [c.token_ids for c in exited] == [c.token_ids for c in static]
    assert all(c.exit_layers == (min_layers,) * len(c.token_ids) for c in exited)
    assert all(c.mean_exit_layers == min_layers for c in exited)


# ---------------------------------------------------------------- an independent reference


def _score(loaded, policy: str, before: torch.Tensor, after: torch.Tensor) -> float:
    if policy == "confidence":
        probs = torch.softmax(loaded.logits_from_hidden(after[None]).float()[0], dim=-1)
        top = sorted(probs.tolist(), reverse=True)
        return top[0] - top[1]
    return float(torch.nn.functional.cosine_similarity(before.float(), after.float(), dim=0))


def reference_exit_completion(loaded, prompt_ids: list[int], params: GenerationParams):
    """One prompt, no KV cache: the whole sequence is re-run every step. A generated token's input
    position keeps its state frozen above the layer its prediction exited at (state propagation);
    the prompt runs at full depth. Greedy, cut after EOS."""
    with torch.inference_mode():
        return _reference(loaded, prompt_ids, params)


def _reference(loaded, prompt_ids: list[int], params: GenerationParams):
    seq, exits = list(prompt_ids), []
    eos = set(loaded.eos_token_ids)
    layers = loaded.layers
    for _ in range(params.max_new_tokens):
        # position of the input that produced generated token i (i >= 1) -> its exit layer
        frozen = {len(prompt_ids) - 1 + i: e for i, e in enumerate(exits) if i >= 1}
        states: dict[int, torch.Tensor] = {}

        def hook_for(k, frozen=frozen, states=states):
            def hook(_m, args, kwargs, output):
                before = args[0] if args else kwargs["hidden_states"]
                after = (output[0] if isinstance(output, tuple) else output).clone()
                for position, exit_layer in frozen.items():
                    if exit_layer < k:
                        after[:, position] = before[:, position]
                states[k - 1], states[k] = before[0, -1], after[0, -1]
                return (after, *output[1:]) if isinstance(output, tuple) else after

            return hook

        handles = [
            layer.register_forward_hook(hook_for(i + 1), with_kwargs=True) for i, layer in enumerate(layers)
        ]
        try:
            loaded.model(input_ids=torch.tensor([seq]), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        exit_layer = loaded.n_layers
        for k in range(params.min_layers, loaded.n_layers):
            if _score(loaded, params.exit_policy, states[k - 1], states[k]) >= params.threshold:
                exit_layer = k
                break
        token = int(loaded.logits_from_hidden(states[exit_layer][None])[0].argmax())
        exits.append(exit_layer)
        seq.append(token)
        if token in eos:
            break
    return tuple(seq[len(prompt_ids) :]), tuple(exits)


@pytest.mark.parametrize("policy, thresholds", [("confidence", [0.05, 0.3]), ("saturation", [0.5, 0.8])])
def test_mixed_exits_match_a_no_cache_reference(loaded, policy, thresholds):
    params = exit_params(policy, thresholds[0], min_layers=2)
    batched = generate(loaded, PROMPTS, [], params, thresholds=thresholds)
    encoded = encode_prompts(loaded.tokenizer, PROMPTS, params)
    expected = [
        reference_exit_completion(loaded, ids, exit_params(policy, t, min_layers=2))
        for ids in encoded
        for t in thresholds
    ]
    assert [(c.token_ids, c.exit_layers) for c in batched] == expected
    assert len({c.params_hash for c in batched}) == len(thresholds)


def test_some_tokens_exit_early_in_the_mixed_case(tiny_tokenizer):
    """The reference test above must not pass vacuously: exits differ from L and from each other."""
    loaded = from_objects(build_tiny_model("llama", n_layers=N_LAYERS), tiny_tokenizer)
    for policy, thresholds in [("confidence", [0.05, 0.3]), ("saturation", [0.5, 0.8])]:
        batched = generate(loaded, PROMPTS, [], exit_params(policy, 0.0, min_layers=2), thresholds=thresholds)
        layers = {k for c in batched for k in c.exit_layers}
        assert len(layers) >= 2 and min(layers) < N_LAYERS, (policy, layers)
        variants = exit_variants(loaded, exit_params(policy, 0.0, min_layers=2), thresholds)
        assert [v.threshold for v in variants] == thresholds
        assert [c.params_hash for c in batched] == [v.key() for _ in PROMPTS for v in variants]
