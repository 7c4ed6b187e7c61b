"""All per-architecture knowledge: where the decoder layers, final norm and LM head live.

Adding an architecture is one entry in ``ARCHITECTURES`` plus a tiny config in tests/conftest.py.
Paths are attribute paths from the ``*ForCausalLM`` object; torch-free on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    layers: str  # the nn.ModuleList of decoder blocks
    final_norm: str  # applied to the last kept layer's output
    lm_head: str
    # Configs keep per-layer lists (sliding/full attention) that must shrink with the layer list.
    per_layer_config_lists: tuple[str, ...] = ("layer_types",)


_LLAMA_LIKE = ArchSpec(layers="model.layers", final_norm="model.norm", lm_head="lm_head")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gpt2": ArchSpec(layers="transformer.h", final_norm="transformer.ln_f", lm_head="lm_head"),
    "gpt_neox": ArchSpec(layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", lm_head="lm_head"),
}

# What users call them, for error messages.
FAMILY_NAMES = "Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Phi-3, GPT-2, GPT-NeoX (Pythia)"


class UnsupportedArchitectureError(ValueError):
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


def resolve(root: object, path: str) -> object:
    """Follow a dotted attribute path ('model.layers') from the causal-LM object."""
    node = root
    for part in path.split("."):
        node = getattr(node, part)
    return node


def assign(root: object, path: str, value: object) -> None:
    *parents, last = path.split(".")
    setattr(resolve(root, ".".join(parents)) if parents else root, last, value)
