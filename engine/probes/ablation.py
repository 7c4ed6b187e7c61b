"""What-if: project a direction (e.g. the refusal direction) out of the residual stream and generate.

Imports torch: ``engine.probes`` loads this module only when its names are used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from engine.architectures import swapped
from engine.errors import UserInputError
from engine.models import LayerWrapper, LoadedModel
from engine.probes.directions import unit
from engine.types import GenerationParams, Prompt

if TYPE_CHECKING:
    from engine.types import Completion


def _project_out(hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    return hidden - (hidden @ direction)[..., None] * direction


class ProjectedLayer(LayerWrapper):
    """A decoder layer whose output (and, for the first layer, input) has ``direction`` removed."""

    def __init__(self, inner: nn.Module, direction: torch.Tensor, clean_input: bool) -> None:
        super().__init__(inner)
        self.direction = direction
        self.clean_input = clean_input

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.clean_input:
            hidden_states = _project_out(hidden_states, self.direction)
        out = self.inner(hidden_states, *args, **kwargs)
        if isinstance(out, tuple):
            return (_project_out(out[0], self.direction), *out[1:])
        return _project_out(out, self.direction)


@contextmanager
def ablated_direction(loaded: LoadedModel, direction: np.ndarray) -> Iterator[LoadedModel]:
    """Inside the block ``direction`` is projected out of the residual stream between layers.

    Projected: the embeddings (layer 0's input) and every decoder layer's output, at every position, so
    no layer receives it from an earlier one and the lens / head never see it. Inside one layer the MLP
    still reads what that layer's attention just wrote along it: this is weaker than orthogonalising
    the weights (Arditi et al. 2024), which would need per-architecture submodule names. The layers are
    swapped for projecting wrappers and always restored, also when the body raises; the model's lock
    is held throughout.
    """
    parameter = next(loaded.model.parameters())
    r = torch.as_tensor(unit(np.asarray(direction, dtype=np.float64)), dtype=parameter.dtype)
    r = r.to(parameter.device)
    if r.shape != (loaded.info.hidden_size,) or not bool(r.any()):
        raise UserInputError(f"the direction must be a non-zero vector of size {loaded.info.hidden_size}")
    with loaded.lock:
        wrapped = [ProjectedLayer(layer, r, clean_input=i == 0) for i, layer in enumerate(loaded.layers)]
        with swapped(loaded.model, {loaded.spec.layers: nn.ModuleList(wrapped)}):
            yield loaded


def generate_ablated(
    loaded: LoadedModel,
    prompts: Sequence[Prompt | str],
    layers: Sequence[int],
    direction: np.ndarray,
    params: GenerationParams | None = None,
) -> list[Completion]:
    """``engine.generation.generate`` with ``direction`` ablated (do not store these as plain generations)."""
    from engine.generation import generate

    with ablated_direction(loaded, direction):
        return generate(loaded, prompts, layers, params)
