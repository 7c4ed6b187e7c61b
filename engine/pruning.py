"""Which layers a depth-pruned deployment would drop, scored on a calibration set of prompts.

- ``block-influence`` (ShortGPT, Men et al. 2024): BI_l = 1 − E[cos(h_{l−1}, h_l)] over calibration
  tokens, h_0 the embeddings and h_l the residual stream after layer l (1-based). The N layers with the
  lowest BI change their input least and are dropped.
- ``angular`` (Gromov et al. 2024): d(ℓ, n) = E[arccos(cos(h_ℓ, h_{ℓ+n}))] / π; the n contiguous layers
  ℓ+1..ℓ+n whose input and output are closest are dropped (ℓ = argmin).

Expectations run over every real (non-padding) token of every calibration prompt, rendered as for
generation. The residuals are the raw outputs of the decoder layers (before the final norm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.decoding.capture import captured_residuals
from engine.decoding.prompts import fit_prompts, left_pad, position_ids_for
from engine.depths import PRUNE_CRITERIA
from engine.errors import UserInputError
from engine.models import LoadedModel
from engine.types import GenerationParams

CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class LayerScores:
    """A criterion's per-layer scores and the layers it drops (1-based).

    ``scores[i]`` belongs to layer i+1 (block influence) or to the block starting after layer i
    (angular: the block i+1..i+n)."""

    criterion: str
    remove: int
    scores: tuple[float, ...]
    dropped: tuple[int, ...]
    n_tokens: int


def _residuals(loaded: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """h_0..h_L at every real token, float32 [tokens, hidden] each."""
    with captured_residuals(loaded, positions=None) as found:
        loaded.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_for(mask),
            use_cache=False,
            logits_to_keep=1,
        )
    real = mask.bool()
    return [found[i][real].float() for i in range(loaded.n_layers + 1)]


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12).clamp(-1.0, 1.0)


def score_layers(
    loaded: LoadedModel,
    texts: Sequence[str],
    criterion: str,
    remove: int,
    params: GenerationParams | None = None,
) -> LayerScores:
    """Score the layers on ``texts`` and pick the ``remove`` layers ``criterion`` drops."""
    if criterion not in PRUNE_CRITERIA:
        raise UserInputError(
            f"pruning criterion {criterion!r} is unknown: use one of {', '.join(PRUNE_CRITERIA)}"
        )
    n_layers = loaded.n_layers
    if not 1 <= remove < n_layers:
        raise UserInputError(f"--remove {remove}: give 1..{n_layers - 1} layers (at least one must stay)")
    if not texts:
        raise UserInputError("the calibration set has no prompts")
    # cut to the model's context like every other path (the answer budget of ``params`` left free)
    encoded = [ids for ids, _cut in fit_prompts(loaded, texts, params or GenerationParams())]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    span = 1 if criterion == "block-influence" else remove
    sums = torch.zeros(n_layers + 1 - span, dtype=torch.float64)
    tokens = 0
    with loaded.lock, torch.inference_mode():
        for start in range(0, len(order), CALIBRATION_BATCH):
            chunk = [encoded[i] for i in order[start : start + CALIBRATION_BATCH]]
            ids, mask = left_pad(chunk, loaded.tokenizer.pad_token_id, loaded.device)
            states = _residuals(loaded, ids, mask)
            for first in range(n_layers + 1 - span):
                cos = _cosines(states[first], states[first + span]).double()
                value = 1.0 - cos if criterion == "block-influence" else torch.arccos(cos) / math.pi
                sums[first] += value.sum().cpu()
            tokens += int(mask.sum())
    scores = tuple(float(s) for s in sums / tokens)
    if criterion == "block-influence":
        dropped = tuple(sorted(sorted(range(1, n_layers + 1), key=lambda layer: scores[layer - 1])[:remove]))
    else:
        start = min(range(len(scores)), key=lambda i: scores[i])
        dropped = tuple(range(start + 1, start + remove + 1))
    return LayerScores(criterion, remove, scores, dropped, tokens)
