"""Truncation at k equals a model built with only the first k layers, for every supported architecture."""

from __future__ import annotations

import pytest
import torch
from conftest import N_LAYERS, TINY_CONFIGS, build_tiny_model
from transformers import AutoModelForCausalLM

from engine.architectures import ARCHITECTURES, UnsupportedArchitectureError, spec_for, swapped
from engine.generation import encode_prompts, generate, left_pad, position_ids_for
from engine.lenses.logit import residuals_for_ids
from engine.modelfiles import peek_n_layers
from engine.models import depth_routed, from_objects, truncated
from engine.types import GenerationParams

PROMPTS = ["How do I bake bread?", "Write a poem about the sea and the sky, please, right now.", "Hello"]
DEPTHS = [N_LAYERS, 4, 2, 1]
PARAMS = GenerationParams(max_new_tokens=6)


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def arch_case(request, tmp_path_factory, tiny_tokenizer):
    """(loaded model, {k: reference model built with num_hidden_layers=k}) for one architecture."""
    model = build_tiny_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    references = {
        k: AutoModelForCausalLM.from_pretrained(folder, num_hidden_layers=k, dtype=torch.float32).eval()
        for k in DEPTHS
    }
    for k, reference in references.items():
        assert len(from_objects(reference, tiny_tokenizer).layers) == k
    return from_objects(model, tiny_tokenizer), references


def reference_tokens(
    reference, prompt_ids: list[int], eos: int, max_new_tokens: int = PARAMS.max_new_tokens
) -> tuple[int, ...]:
    """HF generate, greedy, one prompt, on the k-layer model; cut after the first EOS."""
    ids = torch.tensor([prompt_ids])
    out = reference.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos,
    )[0, len(prompt_ids) :].tolist()
    return tuple(out[: out.index(eos) + 1] if eos in out else out)


def test_every_table_entry_is_tested():
    assert set(ARCHITECTURES) == set(TINY_CONFIGS)


def test_unknown_architecture_lists_supported():
    with pytest.raises(UnsupportedArchitectureError, match="Llama.*GPT-NeoX"):
        spec_for("mamba")


def test_final_norm_and_head_turn_the_last_residual_into_the_model_logits(arch_case, tiny_tokenizer):
    """Where the table puts the final norm, and the head from get_output_embeddings(), for every entry."""
    loaded, _ = arch_case
    encoded = encode_prompts(tiny_tokenizer, PROMPTS, PARAMS)
    ids, mask = left_pad(encoded, tiny_tokenizer.pad_token_id, "cpu")
    residuals = residuals_for_ids(loaded, encoded)  # raw output of the last layer, before the final norm
    with torch.inference_mode():
        expected = loaded.model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask)
        ).logits
        got = loaded.logits_from_hidden(residuals[:, -1])
    torch.testing.assert_close(got, expected[:, -1], rtol=1e-4, atol=1e-4)


def test_swapped_sets_key_paths_and_restores_them_even_when_the_body_raises():
    from types import SimpleNamespace

    root = SimpleNamespace(model=SimpleNamespace(layers=[1, 2, 3]), config=SimpleNamespace(n=3))
    with swapped(root, {"model.layers": [1], "config.n": 1}) as inside:
        assert inside is root and (root.model.layers, root.config.n) == ([1], 1)
    assert (root.model.layers, root.config.n) == ([1, 2, 3], 3)
    with pytest.raises(RuntimeError, match="boom"), swapped(root, {"config.n": 0}):
        raise RuntimeError("boom")
    assert root.config.n == 3
    frozen = SimpleNamespace(a=1, b=7)  # setting int.real fails after "a" was set: "a" is undone
    with pytest.raises(AttributeError), swapped(frozen, {"a": 2, "b.real": 5}):
        pass
    assert frozen.a == 1


def test_peek_n_layers_reads_a_gguf_header(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(tmp_path / "five.gguf", "llama")
    writer.add_block_count(5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert peek_n_layers(str(tmp_path / "five.gguf")) == 5
    (tmp_path / "other.gguf").write_bytes(b"GGML" + bytes(40))
    assert peek_n_layers(str(tmp_path / "other.gguf")) is None


def test_truncated_logits_equal_k_layer_model(arch_case, tiny_tokenizer):
    loaded, references = arch_case
    ids, mask = left_pad(encode_prompts(tiny_tokenizer, PROMPTS, PARAMS), tiny_tokenizer.pad_token_id, "cpu")
    positions = position_ids_for(mask)
    for k, reference in references.items():
        with torch.inference_mode():
            expected = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            with truncated(loaded, k):
                got = loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        real = mask.bool()
        torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-4)


def test_depth_routed_rows_equal_their_own_k_layer_model(arch_case, tiny_tokenizer):
    """One batch, each row at its own depth (deepest first), equals each depth's own model."""
    loaded, references = arch_case
    encoded = encode_prompts(tiny_tokenizer, PROMPTS, PARAMS)
    row_ids = [ids for _k in DEPTHS for ids in encoded]
    row_layers = [k for k in DEPTHS for _ids in encoded]
    ids, mask = left_pad(row_ids, tiny_tokenizer.pad_token_id, "cpu")
    with torch.inference_mode(), depth_routed(loaded, row_layers):
        got = loaded.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask)).logits
    for row, k in enumerate(row_layers):
        with torch.inference_mode():
            single = torch.tensor([row_ids[row]])
            expected = references[k](input_ids=single).logits[0, -1]
        torch.testing.assert_close(got[row, -1], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_greedy_tokens_equal_k_layer_model(arch_case, tiny_tokenizer, batched):
    loaded, references = arch_case
    prompts = PROMPTS if batched else PROMPTS[:1]
    completions = generate(loaded, prompts, DEPTHS, PARAMS)
    assert [(c.prompt_text, c.layers) for c in completions] == [(p, k) for p in prompts for k in DEPTHS]
    eos = tiny_tokenizer.eos_token_id
    for completion, ids in zip(
        completions,
        [ids for ids in encode_prompts(tiny_tokenizer, prompts, PARAMS) for _k in DEPTHS],
        strict=True,
    ):
        assert completion.token_ids == reference_tokens(references[completion.layers], ids, eos)
        assert completion.text == tiny_tokenizer.decode(list(completion.token_ids), skip_special_tokens=True)


def test_model_restored_after_an_exception(tiny_tokenizer):
    loaded = from_objects(build_tiny_model("llama"), tiny_tokenizer)
    layers_before = list(loaded.layers)
    ids = torch.tensor([encode_prompts(tiny_tokenizer, ["Hello"], PARAMS)[0]])
    with torch.inference_mode():
        before = loaded.model(input_ids=ids).logits
    with pytest.raises(RuntimeError, match="boom"), truncated(loaded, 2):
        assert len(loaded.layers) == 2 and loaded.model.config.num_hidden_layers == 2
        raise RuntimeError("boom")
    assert list(loaded.layers) == layers_before
    assert loaded.model.config.num_hidden_layers == N_LAYERS
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, before, rtol=0, atol=0)


def test_gemma2_layer_types_restored(tiny_tokenizer):
    loaded = from_objects(build_tiny_model("gemma2"), tiny_tokenizer)
    before = list(loaded.model.config.layer_types)
    with truncated(loaded, 3):
        assert loaded.model.config.layer_types == before[:3]
    assert loaded.model.config.layer_types == before


def test_routing_rejects_unsorted_rows(tiny_tokenizer):
    loaded = from_objects(build_tiny_model("llama"), tiny_tokenizer)
    with pytest.raises(ValueError, match="deepest first"), depth_routed(loaded, [2, 4]):
        pass
    with pytest.raises(ValueError, match="out of range"), depth_routed(loaded, [N_LAYERS + 1]):
        pass


def test_rows_that_finish_early_leave_the_batch_without_changing_anyone_else(tiny_tokenizer, tmp_path):
    """Make a frequent token the EOS so rows stop at different steps: finished rows are dropped from
    the batch and the caches mid-loop; every row must still equal its own k-layer model's output."""
    import dataclasses

    model = build_tiny_model("llama")
    model.save_pretrained(tmp_path)
    loaded = from_objects(model, tiny_tokenizer)
    params = GenerationParams(max_new_tokens=12)
    free_run = generate(loaded, PROMPTS, DEPTHS, params)
    counts: dict[int, int] = {}
    for completion in free_run:
        for token in completion.token_ids[1:6]:
            counts[token] = counts.get(token, 0) + 1
    stop_token = max(counts, key=counts.get)
    early = dataclasses.replace(loaded, eos_token_ids=(stop_token,))
    completions = generate(early, PROMPTS, DEPTHS, params)
    lengths = {len(c.token_ids) for c in completions}
    assert len(lengths) > 1 and min(lengths) < params.max_new_tokens, "rows must stop at different steps"
    encoded = encode_prompts(tiny_tokenizer, PROMPTS, params)
    for completion in completions:
        reference = AutoModelForCausalLM.from_pretrained(tmp_path, num_hidden_layers=completion.layers).eval()
        prompt_ids = encoded[PROMPTS.index(completion.prompt_text)]
        expected = reference_tokens(reference, prompt_ids, stop_token, params.max_new_tokens)
        assert completion.token_ids == expected
