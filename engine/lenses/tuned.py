"""The tuned exit head: one affine translator per layer (Belrose et al. 2023), and loading it.

Its training is ``engine.lenses.training``; loading needs only this module and ``files``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from engine.lenses.files import LensNotFoundError, damaged_lens, lens_weights_path, read_lens_report
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
    """The tuned lens trained for this model's content hash, on the model's device.

    Validated before use: the file must hold exactly the two translator tensors, finite, shaped for
    this model's layers and width, with the content hash its sidecar claims; anything else is a
    DamagedLensError naming the file (never a lens that decodes garbage, never a traceback).
    """
    path = lens_weights_path(loaded.info.model_hash, directory)
    name = loaded.info.model_id
    if not path.exists():
        raise LensNotFoundError(
            f"no tuned lens for {name} (model hash {loaded.info.model_hash}) in "
            f"{path.parent}: train one with `python -m engine lens train --model {name}`, "
            "or use --exit-head raw"
        )
    report = read_lens_report(loaded.info.model_hash, directory, name)
    if report is None:
        raise damaged_lens(path, "has no JSON sidecar beside it (its hash is unknown)", name)
    if report.get("n_layers", loaded.n_layers) != loaded.n_layers:
        found = report["n_layers"]
        raise damaged_lens(path, f"is for {found} layers, not this model's {loaded.n_layers}", name)
    lens = TunedLens(loaded.n_layers, loaded.info.hidden_size)
    lens.load_state_dict(_read_translators(path, lens, name))
    if lens.lens_hash != report["lens_hash"]:
        raise damaged_lens(
            path, f"has content hash {lens.lens_hash}, not the {report['lens_hash']} its sidecar names", name
        )
    return lens.to(loaded.device).eval()


def _read_translators(path: Path, expected: TunedLens, name: str) -> dict[str, torch.Tensor]:
    """The file's tensors, checked against the shapes ``expected`` has and for finite values."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch reports a damaged file as many different errors
        # torch's own wording runs to many lines of advice about pickling: name the failure only
        raise damaged_lens(path, f"cannot be read as saved tensors ({type(exc).__name__})", name) from exc
    wanted = {key: tuple(tensor.shape) for key, tensor in expected.state_dict().items()}
    if not isinstance(state, dict) or set(state) != set(wanted):
        found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise damaged_lens(path, f"holds {found}, not the tensors {sorted(wanted)}", name)
    for key, shape in wanted.items():
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise damaged_lens(path, f"has a {key} that is not a floating-point tensor", name)
        if tuple(tensor.shape) != shape:
            raise damaged_lens(
                path, f"has {key} of shape {tuple(tensor.shape)}, not this model's {shape}", name
            )
        if not bool(torch.isfinite(tensor).all()):
            raise damaged_lens(path, f"has non-finite values (NaN or infinity) in {key}", name)
    return state
