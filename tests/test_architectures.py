"""Each architecture's keys/values function (``ArchSpec.keys_values``) gives bit for bit what the decoder
layer itself writes to its cache, on every tiny architecture, for a left-padded prefill and a decoding
step (where early exit uses it)."""

from __future__ import annotations

import pytest
import torch
from conftest import N_LAYERS, TINY_CONFIGS, build_tiny_model

from engine.architectures import ARCHITECTURES, resolve
from engine.decoding.prompts import position_ids_for


def _recorded_writes(model, spec, ids, mask, cache):
    """One forward; per layer: (its input, its kwargs' position embeddings, what it wrote to the cache)."""
    layers = list(resolve(model, spec.layers))
    inputs: dict[int, tuple] = {}
    writes: dict[int, tuple] = {}
    own_update = cache.update

    def recording_update(keys, values, layer_index, *args, **kwargs):
        writes[layer_index] = (keys.clone(), values.clone())
        return own_update(keys, values, layer_index, *args, **kwargs)

    def hook_for(index):
        def before(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            inputs[index] = (hidden.clone(), kwargs.get("position_embeddings"))

        return before

    handles = [
        layer.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)
    ]
    cache.update = recording_update
    try:
        model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_for(mask)[:, -ids.shape[1] :],
            past_key_values=cache,
            use_cache=True,
        )
    finally:
        del cache.update
        for handle in handles:
            handle.remove()
    return layers, inputs, writes


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_keys_values_are_what_the_layer_writes(arch):
    from transformers import DynamicCache

    spec = ARCHITECTURES[arch]
    assert spec.keys_values is not None, f"{arch} has no keys/values function"
    model = build_tiny_model(arch, n_layers=N_LAYERS)
    ids = torch.tensor([[0, 5, 9, 14, 3], [7, 8, 21, 4, 11]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])  # left padding: positions differ per row
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        for step_ids, step_mask in (
            (ids, mask),
            (torch.tensor([[17], [30]]), torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)),
        ):
            layers, inputs, writes = _recorded_writes(model, spec, step_ids, step_mask, cache)
            assert sorted(writes) == list(range(N_LAYERS))
            for index, layer in enumerate(layers):
                hidden, position_embeddings = inputs[index]
                keys, values, layer_index = spec.keys_values(layer, hidden, position_embeddings)
                assert layer_index == index
                written_keys, written_values = writes[index]
                assert keys.shape == written_keys.shape and values.shape == written_values.shape
                assert torch.equal(keys, written_keys), f"{arch} layer {index}: keys differ"
                assert torch.equal(values, written_values), f"{arch} layer {index}: values differ"
            mask = step_mask
