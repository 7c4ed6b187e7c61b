"""Depth arithmetic: layers k (stored) versus percentages d (shown). Pure, torch-free."""

from __future__ import annotations

import math

from engine.errors import DepthScopeError

# The seed study's depths, in % of the model's layers.
DEFAULT_DEPTHS: tuple[float, ...] = (50, 69, 78, 84, 88, 94, 100)


class DepthError(DepthScopeError, ValueError):
    """A depth the user gave cannot be used; the message says which values are allowed."""


def layers_from_percent(percent: float, n_layers: int) -> int:
    """k = round(d/100 · L) (Python's round, as the spec writes it), clamped to 1..L."""
    if not isinstance(percent, (int, float)) or math.isnan(percent):
        raise DepthError(f"depth {percent!r} is not a number: give a percentage in (0, 100]")
    if percent <= 0 or percent > 100:
        raise DepthError(f"depth {percent:g} % is out of range: give a percentage in (0, 100]")
    k = round(percent / 100.0 * n_layers)
    return min(max(k, 1), n_layers)


def percent_from_layers(layers: int, n_layers: int) -> float:
    return 100.0 * layers / n_layers


def check_layers(layers: int, n_layers: int) -> int:
    if isinstance(layers, bool) or not isinstance(layers, int):
        raise DepthError(f"layers {layers!r} is not a whole number: give k in 1..{n_layers}")
    if not 1 <= layers <= n_layers:
        raise DepthError(
            f"layers {layers} is out of range: this model has {n_layers} layers, give k in 1..{n_layers}"
        )
    return layers


def _parse_numbers(text: str, what: str, cast: type) -> list:
    example = "4,8" if what == "layers" else "50,84,100"
    parts = [p.strip().rstrip("%").strip() for p in str(text).split(",")]
    if not any(parts):
        raise DepthError(f"no {what} given: write a comma-separated list such as {example}")
    values = []
    for part in parts:
        if not part:
            raise DepthError(f"empty entry in {what} list {text!r}: remove the extra comma")
        try:
            values.append(cast(part))
        except ValueError:
            raise DepthError(f"{part!r} in {what} list is not a number: write e.g. {example}") from None
    return values


def _distinct(values: list[int]) -> list[int]:
    """Keep the user's order, drop repeats (two percentages can map to the same layer count)."""
    return list(dict.fromkeys(values))


def parse_percentages(text: str) -> tuple[float, ...]:
    """'50, 84, 100 %' → (50.0, 84.0, 100.0), each checked to lie in (0, 100]; needs no model, so
    every command and page validates depths with it before a model loads."""
    percents = _parse_numbers(text, "depths", float)
    for percent in percents:
        layers_from_percent(percent, 1)  # raises DepthError for NaN, inf and anything outside (0, 100]
    return tuple(dict.fromkeys(percents))


def parse_layer_counts(text: str) -> tuple[int, ...]:
    """'4,8' → (4, 8), each at least 1; the upper bound (the model's layer count) is checked once known."""
    counts = _parse_numbers(text, "layers", int)
    for k in counts:
        if k < 1:
            raise DepthError(f"layers {k} is out of range: give whole layer counts k ≥ 1, e.g. 4,8")
    return tuple(dict.fromkeys(counts))


def layers_for(
    n_layers: int, percents: tuple[float, ...], layers: tuple[int, ...] | None = None
) -> list[int]:
    """The distinct layer counts a request means on an ``n_layers`` model: ``layers`` if given, else the
    percentages mapped by k = round(d/100 · L)."""
    if layers:
        return _distinct([check_layers(k, n_layers) for k in layers])
    return _distinct([layers_from_percent(d, n_layers) for d in percents])


def parse_layers(text: str, n_layers: int) -> list[int]:
    """'4,8' → [4, 8], each checked against the model's layer count."""
    return layers_for(n_layers, (), parse_layer_counts(text))


def parse_depths(text: str, n_layers: int) -> list[int]:
    """'50,84,100' (percent) → distinct layer counts, in the order given."""
    return layers_for(n_layers, parse_percentages(text))


def default_layers(n_layers: int) -> list[int]:
    """The seed study's seven depths as distinct layer counts, shallowest first."""
    return _distinct([layers_from_percent(d, n_layers) for d in DEFAULT_DEPTHS])


def depth_label(layers: int, n_layers: int) -> str:
    """'27 / 32 layers · 84 %' — how a depth is shown everywhere."""
    return f"{layers} / {n_layers} layers · {percent_from_layers(layers, n_layers):.0f} %"
