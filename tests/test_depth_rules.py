"""Block removal equals a model rebuilt without those layers, and self-speculative decoding equals the
full model, on every supported architecture; the removed set and the draft settings key their results."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import N_LAYERS, TINY_CONFIGS, build_tiny_model
from test_truncation import PROMPTS, reference_tokens
from transformers import AutoModelForCausalLM

from engine.depths import (
    DepthError,
    canonical_removal,
    check_drop,
    format_ranges,
    kept_layers,
    parse_drop_ranges,
)
from engine.generation import encode_prompts, generate, left_pad, position_ids_for
from engine.models import from_objects, layers_kept, truncated
from engine.types import GenerationParams, ParamsError

PARAMS = GenerationParams(max_new_tokens=8)
# 0-based kept layers of a 6-layer model: a middle block out, scattered layers out, the first layer out.
KEPT_SETS = [(0, 1, 4, 5), (0, 2, 3, 5), (1, 2, 3, 4, 5)]


def rebuilt_without(model, kept: tuple[int, ...]):
    """An independent reference: a fresh model of len(kept) layers (each keeping its own attention type)
    with the kept layers' weights copied in, renumbered 0..len(kept)-1."""
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [model.config.layer_types[i] for i in kept]
    reference = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    prefix = "transformer.h." if config.model_type == "gpt2" else None
    prefix = prefix or ("gpt_neox.layers." if config.model_type == "gpt_neox" else "model.layers.")
    renumber = {old: new for new, old in enumerate(kept)}
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            if int(index) not in renumber:
                continue
            name = f"{prefix}{renumber[int(index)]}.{rest}"
        state[name] = tensor
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in m or "bias" in m or "masked" in m for m in missing), missing
    return reference


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def arch_model(request, tiny_tokenizer):
    model = build_tiny_model(request.param)
    return model, from_objects(model, tiny_tokenizer)


def test_layers_kept_logits_equal_a_model_rebuilt_without_the_others(arch_model, tiny_tokenizer):
    model, loaded = arch_model
    ids, mask = left_pad(encode_prompts(tiny_tokenizer, PROMPTS, PARAMS), tiny_tokenizer.pad_token_id, "cpu")
    positions, real = position_ids_for(mask), mask.bool()
    with torch.inference_mode():
        full = loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        for kept in KEPT_SETS:
            expected = rebuilt_without(model, kept)(
                input_ids=ids, attention_mask=mask, position_ids=positions
            )
            with layers_kept(loaded, kept):
                got = loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            torch.testing.assert_close(got[real], expected.logits[real], rtol=1e-4, atol=1e-4)
            assert not torch.allclose(got[real], full[real], atol=1e-3)  # the removal changed the network
        after = loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(after, full, rtol=0, atol=0)  # restored: layers and layer_idx


def test_truncation_is_keeping_the_first_k_layers(arch_model, tiny_tokenizer):
    _, loaded = arch_model
    ids = torch.tensor([encode_prompts(tiny_tokenizer, PROMPTS[:1], PARAMS)[0]])
    with torch.inference_mode():
        with truncated(loaded, 3):
            expected = loaded.model(input_ids=ids).logits
        with layers_kept(loaded, (0, 1, 2)):
            got = loaded.model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_greedy_tokens_with_layers_dropped_equal_the_rebuilt_model(arch_model, tiny_tokenizer, batched):
    model, loaded = arch_model
    prompts = PROMPTS if batched else PROMPTS[:1]
    eos = tiny_tokenizer.eos_token_id
    for kept in KEPT_SETS[:2]:
        drop = tuple(i + 1 for i in range(N_LAYERS) if i not in kept)
        params = GenerationParams(max_new_tokens=8, drop_layers=drop)
        completions = generate(loaded, prompts, [], params)
        reference = rebuilt_without(model, kept)
        assert [c.layers for c in completions] == [len(kept)] * len(prompts)
        for completion, ids in zip(completions, encode_prompts(tiny_tokenizer, prompts, params), strict=True):
            assert completion.token_ids == reference_tokens(reference, ids, eos, 8)
            assert completion.mean_exit_layers == len(kept)


@pytest.mark.parametrize("draft", [(1, 1), (4, 3)], ids=["k1n1", "k4n3"])
def test_speculative_greedy_equals_full_depth_token_for_token(arch_model, tiny_tokenizer, draft):
    _, loaded = arch_model
    k, n = draft
    full = generate(loaded, PROMPTS, [N_LAYERS], GenerationParams(max_new_tokens=12))
    params = GenerationParams(max_new_tokens=12, exit_policy="speculative", draft_layers=k, draft_tokens=n)
    speculative = generate(loaded, PROMPTS, [], params)
    assert [c.token_ids for c in speculative] == [c.token_ids for c in full]
    for completion in speculative:
        assert completion.layers == N_LAYERS and 0.0 <= completion.acceptance_rate <= 1.0
        # Never cheaper than one full pass per token plus the drafts it ran (the verification recomputes).
        assert completion.layer_compute >= N_LAYERS
        assert completion.mean_exit_layers == completion.layer_compute


def test_speculative_counts_accepted_drafts_and_their_compute(tiny_tokenizer):
    """A draft that is the whole model but one layer of a model whose last layer does nothing: every
    draft is accepted, so each block of n drafts yields n + 1 tokens for n·k + (n + 1)·L passes."""
    model = build_tiny_model("llama")
    last = model.model.layers[-1]
    for weight in (last.self_attn.o_proj.weight, last.mlp.down_proj.weight):
        torch.nn.init.zeros_(weight)  # the last block adds nothing to the residual stream
    loaded = from_objects(model, tiny_tokenizer)
    n, k, tokens = 3, N_LAYERS - 1, 9  # 1 token from the prompt, then two blocks of n + 1
    params = GenerationParams(
        max_new_tokens=tokens, exit_policy="speculative", draft_layers=k, draft_tokens=n
    )
    (completion,) = generate(loaded, ["Hello"], [], params)
    if len(completion.token_ids) < tokens:
        pytest.skip("this random model stops early")
    assert completion.acceptance_rate == 1.0
    assert completion.layer_compute == pytest.approx((N_LAYERS + 2 * (n * k + (n + 1) * N_LAYERS)) / tokens)


def test_keys_distinct_for_each_rule_and_static_keys_unchanged():
    static = GenerationParams()
    assert static.key() == GenerationParams(drop_layers=()).key()
    keys = {
        static.key(),
        GenerationParams(drop_layers=(3, 4)).key(),
        GenerationParams(drop_layers=(2, 3)).key(),
        GenerationParams(exit_policy="speculative", draft_layers=2, draft_tokens=4).key(),
        GenerationParams(exit_policy="speculative", draft_layers=3, draft_tokens=4).key(),
        GenerationParams(exit_policy="speculative", draft_layers=2, draft_tokens=2).key(),
    }
    assert len(keys) == 6
    # Keys computed before these rules existed (static, and a confidence exit at 0.5) stay the same.
    assert static.key() == "c3083cf0026c3565"
    assert GenerationParams(exit_policy="confidence", threshold=0.5).key() == "f833bb5084ac60ac"


def test_params_refuse_mixed_rules():
    with pytest.raises(ParamsError, match="greedy"):
        GenerationParams(exit_policy="speculative", draft_layers=2, draft_tokens=4, temperature=0.7)
    with pytest.raises(ParamsError, match="draft layers"):
        GenerationParams(exit_policy="speculative", draft_tokens=4)
    with pytest.raises(ParamsError, match="only apply"):
        GenerationParams(draft_layers=2)
    with pytest.raises(ParamsError, match="static policy"):
        GenerationParams(exit_policy="confidence", threshold=0.5, drop_layers=(2,))
    with pytest.raises(ParamsError, match="sorted"):
        GenerationParams(drop_layers=(4, 3))


def test_drop_ranges_parse_check_and_canonicalise():
    assert parse_drop_ranges("20-27") == tuple(range(20, 28))
    assert parse_drop_ranges("3-4, 10-11,7") == (3, 4, 7, 10, 11)
    assert format_ranges((3, 4, 7, 10, 11)) == "3-4,7,10-11"
    for bad in ("", "a-b", "0-3", "5-3", "3-"):
        with pytest.raises(DepthError):
            parse_drop_ranges(bad)
    with pytest.raises(DepthError, match="never removed"):
        check_drop((5, 6, 7), 6)
    with pytest.raises(DepthError, match="keep at least one"):
        check_drop(tuple(range(1, 7)), 6)
    assert kept_layers(6, 0, (3, 4)) == (1, 2, 5, 6)
    assert kept_layers(6, 4) == (1, 2, 3, 4)
    assert canonical_removal((5, 6), 6) == (4, ())  # a removed suffix is truncation
    assert canonical_removal((3, 4), 6) == (4, (3, 4))


def test_drop_out_of_range_is_refused_when_generating(tiny_tokenizer):
    loaded = from_objects(build_tiny_model("llama"), tiny_tokenizer)
    with pytest.raises(DepthError, match="out of range"):
        generate(loaded, ["Hello"], [], GenerationParams(max_new_tokens=2, drop_layers=(7,)))
    with pytest.raises(ParamsError, match="below the model"):
        generate(
            loaded,
            ["Hello"],
            [],
            GenerationParams(max_new_tokens=2, exit_policy="speculative", draft_layers=6, draft_tokens=2),
        )
