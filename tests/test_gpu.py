"""The exactness guarantees hold on a CUDA device too: static truncation equals a model built with only
the first k layers, and every way the decode loop routes a dynamic-exit step gives the same tokens and
exit layers. Skipped where no GPU is visible (CI has none); run on a lent GPU machine."""

from __future__ import annotations

import pytest
import torch
from conftest import N_LAYERS, TINY_CONFIGS, build_tiny_model
from transformers import AutoModelForCausalLM

import engine.decoding.loop as loop
from engine.generation import encode_prompts, generate
from engine.models import from_objects
from engine.types import GenerationParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PROMPTS = ["How do I bake bread?", "Write a poem about the sea and the sky, please, right now.", "Hello"]
DEPTHS = [N_LAYERS, 4, 2, 1]
PARAMS = GenerationParams(max_new_tokens=6)


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def arch_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"gpu-{request.param}")
    build_tiny_model(request.param).save_pretrained(folder)
    return folder


def _on_gpu(folder, tokenizer, **overrides):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **overrides)
    return from_objects(model.to("cuda").eval(), tokenizer)


def _reference(model, prompt_ids: list[int], eos: int) -> tuple[int, ...]:
    ids = torch.tensor([prompt_ids], device="cuda")
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=PARAMS.max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos,
    )[0, len(prompt_ids) :].tolist()
    return tuple(out[: out.index(eos) + 1] if eos in out else out)


def test_truncation_on_the_gpu_equals_a_model_built_with_k_layers(arch_folder, tiny_tokenizer):
    loaded = _on_gpu(arch_folder, tiny_tokenizer)
    assert loaded.device.type == "cuda"
    got = {(c.prompt_text, c.layers): c.token_ids for c in generate(loaded, PROMPTS, DEPTHS, PARAMS)}
    encoded = encode_prompts(tiny_tokenizer, PROMPTS, PARAMS)
    eos = tiny_tokenizer.eos_token_id
    for k in DEPTHS:
        reference = _on_gpu(arch_folder, tiny_tokenizer, num_hidden_layers=k).model
        for text, ids in zip(PROMPTS, encoded, strict=True):
            assert got[(text, k)] == _reference(reference, ids, eos), (text, k)


@pytest.mark.parametrize("policy, thresholds", [("confidence", [0.05, 0.3, 0.9]), ("saturation", [0.5, 0.8])])
def test_every_routing_of_an_exit_step_decodes_the_same_on_the_gpu(
    arch_folder, tiny_tokenizer, policy, thresholds, monkeypatch
):
    loaded = _on_gpu(arch_folder, tiny_tokenizer)
    params = GenerationParams(max_new_tokens=8, exit_policy=policy, threshold=thresholds[0], min_layers=2)

    def decoded():
        done = generate(loaded, PROMPTS, [], params, thresholds=thresholds)
        return [(c.token_ids, c.exit_layers) for c in done]

    monkeypatch.setattr(loop, "SPLIT_BELOW", 0.0)  # the whole batch through every layer
    whole = decoded()
    assert {k for _, exits in whole for k in exits} - {N_LAYERS}, "no token exited early: vacuous"
    monkeypatch.setattr(loop, "SPLIT_BELOW", 1.0)  # exited rows compute keys and values only
    assert decoded() == whole
