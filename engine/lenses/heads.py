"""Exit heads: how a layer's state is read out when a token exits there (the rules that decide when
are ``engine.rules``; the loop that applies them, with CALM state propagation, is
``engine.decoding.loop``).

``raw`` is the model's final norm + LM head on the layer's state (the logit lens, today's truncation).
``tuned`` first maps the state through the tuned lens's affine translator for that layer
(``engine.lenses.tuned``); at L both heads are the model's own output.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import torch

from engine.models import LoadedModel
from engine.types import GenerationParams


class ExitHead(Protocol):
    """Maps the residual stream after ``layers`` decoder layers into the final layer's basis."""

    name: str
    lens_hash: str

    def translate(self, hidden: torch.Tensor, layers: int) -> torch.Tensor: ...


class RawHead:
    """The logit lens: no translation (final norm + LM head applied by the caller)."""

    name = "raw"
    lens_hash = ""

    def translate(self, hidden: torch.Tensor, layers: int) -> torch.Tensor:
        return hidden


RAW_HEAD = RawHead()


def resolve_head(loaded: LoadedModel, params: GenerationParams) -> tuple[GenerationParams, ExitHead]:
    """The head ``params`` asks for, and params whose ``lens_hash`` names the lens actually used.

    A tuned head is loaded from ``data/lenses/`` by the model's content hash; a ``lens_hash`` given in
    ``params`` must match it, so a cached result never silently mixes lenses.
    """
    if params.exit_head == "raw":
        return params, RAW_HEAD
    from engine.lenses.tuned import LensNotFoundError, load_lens

    lens = load_lens(loaded)
    if params.lens_hash and params.lens_hash != lens.lens_hash:
        raise LensNotFoundError(
            f"the tuned lens for this model has hash {lens.lens_hash}, not {params.lens_hash}: retrain it "
            "or drop the lens hash to use the current one"
        )
    return replace(params, lens_hash=lens.lens_hash), lens
