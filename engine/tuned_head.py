"""The tuned exit head: one affine translator per layer (Belrose et al. 2023), and loading it.

Kept apart from its training (``engine.tuned_lens``, which generates text with ``engine.generation``) so
that generation can use a trained head without importing the trainer: no import cycle.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from engine.lens_files import LensNotFoundError, lens_weights_path
from engine.models import LoadedModel


class TunedLens(nn.Module):
    """Affine translators for the residuals after 1..L-1 layers: weight [L-1, H, H], bias [L-1, H]."""

    name = "tuned"

    def __init__(self, n_layers: int, hidden_size: int) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.weight = nn.Parameter(torch.zeros(max(0, n_layers - 1), hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(max(0, n_layers - 1), hidden_size))

    def translate(self, hidden: torch.Tensor, layers: int) -> torch.Tensor:
        """The residual after ``layers`` layers mapped to the last layer's basis (identity at L)."""
        if layers >= self.n_layers:
            return hidden
        weight = self.weight[layers - 1].to(hidden.device)
        bias = self.bias[layers - 1].to(hidden.device)
        state = hidden.float()
        return (state + state @ weight.T + bias).to(hidden.dtype)

    def translate_all(self, states: torch.Tensor) -> torch.Tensor:
        """States [L-1, N, H] after 1..L-1 layers, each translated by its own layer (training)."""
        return states + torch.einsum("lnh,lgh->lng", states, self.weight) + self.bias[:, None, :]

    @property
    def lens_hash(self) -> str:
        digest = hashlib.sha256()
        for tensor in (self.weight, self.bias):
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def load_lens(loaded: LoadedModel, directory: Path | None = None) -> TunedLens:
    """The tuned lens trained for this model's content hash, on the model's device."""
    path = lens_weights_path(loaded.info.model_hash, directory)
    if not path.exists():
        raise LensNotFoundError(
            f"no tuned lens for {loaded.info.model_id} (model hash {loaded.info.model_hash}) in "
            f"{path.parent}: train one with `python -m engine lens train --model {loaded.info.model_id}`, "
            "or use --exit-head raw"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    n_layers, hidden = state["weight"].shape[0] + 1, state["weight"].shape[-1]
    if n_layers != loaded.n_layers or hidden != loaded.info.hidden_size:
        raise LensNotFoundError(
            f"the tuned lens in {path} is for {n_layers} layers × {hidden}, not this model's "
            f"{loaded.n_layers} × {loaded.info.hidden_size}: retrain it"
        )
    lens = TunedLens(n_layers, hidden)
    lens.load_state_dict(state)
    return lens.to(loaded.device).eval()
