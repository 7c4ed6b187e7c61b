"""All per-architecture knowledge: where the decoder layers and final norm live.

Adding an architecture is one entry in ``ARCHITECTURES`` plus a tiny config in tests/conftest.py.
Paths are attribute paths from the ``*ForCausalLM`` object; torch-free on purpose. The LM head is
``get_output_embeddings()`` unless an entry names it. ``swapped`` is the one way model state is
changed for a while (truncation, routing, ablation, training a slice of layers).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from engine.errors import DepthScopeError


@dataclass(frozen=True)
class ArchSpec:
    layers: str  # the nn.ModuleList of decoder blocks
    final_norm: str  # applied to the last kept layer's output
    lm_head: str | None = None  # None: the model's get_output_embeddings()
    # Configs keep per-layer lists (sliding/full attention) that must shrink with the layer list.
    per_layer_config_lists: tuple[str, ...] = ("layer_types",)


_LLAMA_LIKE = ArchSpec(layers="model.layers", final_norm="model.norm")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gpt2": ArchSpec(layers="transformer.h", final_norm="transformer.ln_f"),
    "gpt_neox": ArchSpec(layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm"),
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
