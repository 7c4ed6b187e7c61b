"""All per-architecture knowledge: where the decoder layers and final norm live, and how a layer makes
the keys and values it writes to its cache.

Adding an architecture is one entry in ``ARCHITECTURES`` plus a tiny config in tests/conftest.py.
Paths are attribute paths from the ``*ForCausalLM`` object; torch-free at import on purpose (the
keys/values functions import torch only when they run, inside the decoding loop). The LM head is
``get_output_embeddings()`` unless an entry names it. ``swapped`` is the one way model state is
changed for a while (truncation, routing, ablation, training a slice of layers).

Keys and values alone (``ArchSpec.keys_values``): after a token exits early (CALM state
propagation), the layers above it compute only what later tokens read of it, the keys and values of
its frozen state: the layer's input norm, its key/value projections, the key norm where the
architecture has one (Qwen3), rotary positions where it uses them. Each function repeats its layer's
own operations in the same order, so its output is bit for bit what the layer writes to its cache
(``tests/test_architectures.py`` checks it on every tiny architecture). An entry without one makes
the loop run the whole layer up to its cache write instead (slower, same result).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from engine.errors import DepthScopeError

# (decoder layer, its input [rows, tokens, hidden], the (cos, sin) it was given or None) ->
# (keys, values, the layer's cache index): what the layer writes to its cache, computed alone.
KeysValues = Callable[[object, object, object], tuple[object, object, int]]


def _rotated(keys, position_embeddings):
    """Rotary positions applied to keys [rows, heads, tokens, head_dim] as the layers apply them: the
    leading ``cos.shape[-1]`` dims of each head rotate (all of them but in Phi-3 and GPT-NeoX configs
    with a partial rotary factor), the rest pass through."""
    import torch

    cos, sin = (part.unsqueeze(1) for part in position_embeddings)
    rotary = cos.shape[-1]
    turning = keys[..., :rotary]
    half = rotary // 2
    rotated = turning * cos + torch.cat((-turning[..., half:], turning[..., :half]), dim=-1) * sin
    return rotated if rotary == keys.shape[-1] else torch.cat([rotated, keys[..., rotary:]], dim=-1)


def _separate_keys_values(layer, hidden, position_embeddings):
    """Llama-like layers: ``input_layernorm`` then ``self_attn.k_proj`` / ``v_proj`` (and ``k_norm`` per
    head before the transpose where there is one: Qwen3), rotary positions on the keys."""
    attention = layer.self_attn
    normed = layer.input_layernorm(hidden)
    per_head = (*normed.shape[:-1], -1, attention.head_dim)
    keys = attention.k_proj(normed).view(per_head)
    if getattr(attention, "k_norm", None) is not None:
        keys = attention.k_norm(keys)
    values = attention.v_proj(normed).view(per_head).transpose(1, 2)
    return _rotated(keys.transpose(1, 2), position_embeddings), values, attention.layer_idx


def _phi3_keys_values(layer, hidden, position_embeddings):
    """Phi-3: one fused ``qkv_proj`` (run whole, so the keys and values are exactly the layer's)."""
    attention = layer.self_attn
    normed = layer.input_layernorm(hidden)
    fused = attention.qkv_proj(normed)
    start = attention.config.num_attention_heads * attention.head_dim
    width = attention.num_key_value_heads * attention.head_dim
    per_head = (*normed.shape[:-1], -1, attention.head_dim)
    keys = fused[..., start : start + width].view(per_head).transpose(1, 2)
    values = fused[..., start + width :].view(per_head).transpose(1, 2)
    return _rotated(keys, position_embeddings), values, attention.layer_idx


def _gpt2_keys_values(layer, hidden, position_embeddings):
    """GPT-2: ``ln_1`` then the fused ``attn.c_attn``; positions are in the embeddings, none here."""
    attention = layer.attn
    _, keys, values = attention.c_attn(layer.ln_1(hidden)).split(attention.split_size, dim=2)
    per_head = (*keys.shape[:-1], -1, attention.head_dim)
    return keys.view(per_head).transpose(1, 2), values.view(per_head).transpose(1, 2), attention.layer_idx


def _gpt_neox_keys_values(layer, hidden, position_embeddings):
    """GPT-NeoX: ``input_layernorm`` then the fused ``attention.query_key_value`` (heads interleaved),
    rotary positions on the leading dims of each key head."""
    attention = layer.attention
    normed = layer.input_layernorm(hidden)
    fused = attention.query_key_value(normed).view(*normed.shape[:-1], -1, 3 * attention.head_size)
    _, keys, values = fused.transpose(1, 2).chunk(3, dim=-1)
    return _rotated(keys, position_embeddings), values, attention.layer_idx


@dataclass(frozen=True)
class ArchSpec:
    layers: str  # the nn.ModuleList of decoder blocks
    final_norm: str  # applied to the last kept layer's output
    lm_head: str | None = None  # None: the model's get_output_embeddings()
    # Configs keep per-layer lists (sliding/full attention) that must shrink with the layer list.
    per_layer_config_lists: tuple[str, ...] = ("layer_types",)
    # A decoder layer's cache write computed alone (see the module docstring); None: run the layer.
    keys_values: KeysValues | None = None


_LLAMA_LIKE = ArchSpec(layers="model.layers", final_norm="model.norm", keys_values=_separate_keys_values)

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,  # k_norm: found on the attention module
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": ArchSpec(layers="model.layers", final_norm="model.norm", keys_values=_phi3_keys_values),
    "gpt2": ArchSpec(layers="transformer.h", final_norm="transformer.ln_f", keys_values=_gpt2_keys_values),
    "gpt_neox": ArchSpec(
        layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", keys_values=_gpt_neox_keys_values
    ),
}

# What users call them, for error messages.
FAMILY_NAMES = "Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Phi-3, GPT-2, GPT-NeoX (Pythia)"


class UnsupportedArchitectureError(DepthScopeError, ValueError):
    pass


def spec_for(model_type: str) -> ArchSpec:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture '{model_type}' is not supported: DepthScope knows {FAMILY_NAMES} "
            f"(model_type {', '.join(sorted(ARCHITECTURES))}). Add an entry to engine/architectures.py "
            "to support it."
        ) from None


def context_length(config: object) -> int | None:
    """How many positions the model was built for (None if its config does not say). GPT-2's
    ``n_positions`` is reachable as ``max_position_embeddings`` through the config's attribute map."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def resolve(root: object, path: str) -> object:
    """Follow a dotted attribute path ('model.layers') from the causal-LM object."""
    node = root
    for part in path.split("."):
        node = getattr(node, part)
    return node


def assign(root: object, path: str, value: object) -> None:
    *parents, last = path.split(".")
    setattr(resolve(root, ".".join(parents)) if parents else root, last, value)


@contextmanager
def swapped(root: object, values: Mapping[str, object]) -> Iterator[object]:
    """Set each dotted path under ``root`` to its value for the block; the originals come back in
    ``finally``, also when the body (or a later assignment) raises."""
    originals = {path: resolve(root, path) for path in values}
    done: list[str] = []  # only what was set is put back (a failed assignment changed nothing)
    try:
        for path, value in values.items():
            assign(root, path, value)
            done.append(path)
        yield root
    finally:
        for path in reversed(done):
            assign(root, path, originals[path])
