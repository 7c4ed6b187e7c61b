"""Directions in the residual stream: per-layer diff-of-means and logistic-probe directions, their
cosines, and the refusal direction (the unit diff-of-means at one layer) that ablation removes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engine.probes.linear import logistic_probe

if TYPE_CHECKING:  # only annotations: collecting activations needs torch, reading them does not
    from engine.probes.activations import Activations


def unit(vectors: np.ndarray) -> np.ndarray:
    """Unit vectors along the last axis; zero vectors stay zero (an undefined direction has no sign)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors, dtype=np.float64), where=norms > 1e-12)


def diff_of_means_directions(activations: Activations) -> np.ndarray:
    """Unit (mean harmful − mean benign) per layer: [L+1, hidden]."""
    r, y = activations.residuals.astype(np.float64), activations.harmful
    return unit(r[y].mean(0) - r[~y].mean(0))


def probe_directions(activations: Activations, C: float = 1.0) -> np.ndarray:
    """Unit logistic-probe weight per layer, fit on all prompts, in raw residual coordinates: [L+1, hidden].

    The pipeline's weight applies to standardised features; dividing by the scale maps it back.
    """
    from threadpoolctl import threadpool_limits

    directions = []
    with threadpool_limits(limits=1, user_api="blas"):
        for layer in range(activations.n_layers + 1):
            probe = logistic_probe(C).fit(activations.layer(layer).astype(np.float64), activations.harmful)
            scaler, regression = probe[0], probe[-1]
            directions.append(regression.coef_[0] / scaler.scale_)
    return unit(np.array(directions))


def cosine_matrix(directions: np.ndarray) -> np.ndarray:
    """Cosine similarity between every pair of rows (0 where a row is the zero vector)."""
    normed = unit(directions)
    return normed @ normed.T


def refusal_direction(activations: Activations, layer: int) -> np.ndarray:
    """The unit diff-of-means direction (harmful − benign) at ``layer``: what ablation removes."""
    if not 0 <= layer <= activations.n_layers:
        raise ValueError(f"layer {layer} is out of range 0..{activations.n_layers}")
    direction = diff_of_means_directions(activations)[layer]
    if not np.any(direction):
        raise ValueError(f"harmful and benign prompts have the same mean at layer {layer}: no direction")
    return direction
