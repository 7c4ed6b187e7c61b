"""Depth arithmetic: layers k (stored) versus percentages d (shown). Pure, torch-free."""

from __future__ import annotations

import math
from dataclasses import replace

from engine.errors import DepthScopeError
from engine.types import GenerationParams

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


# ---------------------------------------------------------------- layer removal (pruned blocks)

# How a pruned deployment picks the layers it drops (engine.pruning): ShortGPT's Block Influence, and
# Gromov et al.'s angular distance between a block's input and output.
PRUNE_CRITERIA: tuple[str, ...] = ("block-influence", "angular")
DEFAULT_CALIBRATION_SET = "benign"


def parse_drop_ranges(text: str) -> tuple[int, ...]:
    """'20-27' or '3-4,10-12' (1-based, inclusive; a single '5' is one layer) → the removed layers, sorted.
    The upper bound (the model's layer count) is checked once it is known (:func:`check_drop`)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise DepthError("no layers to drop given: write 1-based inclusive ranges such as 20-27 or 3-4,10-12")
    removed: set[int] = set()
    for part in parts:
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise DepthError(
                f"{part!r} is not a layer range: write e.g. 20-27 (1-based, inclusive)"
            ) from None
        if first < 1 or last < first:
            raise DepthError(f"{part!r} is not a range of layers ≥ 1 written low-high, e.g. 20-27")
        removed.update(range(first, last + 1))
    return tuple(sorted(removed))


def check_drop(removed: tuple[int, ...], n_layers: int) -> tuple[int, ...]:
    """The removed layers checked against the model: inside 1..L and at least one layer left (the
    embeddings, the final norm and the head are never layers and are never removed)."""
    if removed and removed[-1] > n_layers:
        raise DepthError(
            f"layer {removed[-1]} is out of range: this model has {n_layers} decoder layers (1..{n_layers}); "
            "the embeddings, final norm and head are never removed"
        )
    if len(set(removed)) >= n_layers:
        raise DepthError(f"removing all {n_layers} layers leaves no network: keep at least one")
    return removed


def kept_layers(n_layers: int, layers: int, removed: tuple[int, ...] = ()) -> tuple[int, ...]:
    """The one notion of "layers kept" (1-based, in order): truncation at k keeps 1..k; block removal
    keeps every layer not removed (then ``layers`` is their count)."""
    if removed:
        return tuple(i for i in range(1, n_layers + 1) if i not in set(removed))
    return tuple(range(1, layers + 1))


def canonical_removal(removed: tuple[int, ...], n_layers: int) -> tuple[int, tuple[int, ...]]:
    """(layers kept, removed set as keyed): removing a suffix k+1..L *is* truncation at k, so it is keyed
    as truncation (empty removed set) and shares truncation's cached results."""
    removed = tuple(sorted(set(removed)))
    kept = n_layers - len(removed)
    if removed == tuple(range(kept + 1, n_layers + 1)):
        return kept, ()
    return kept, removed


def format_ranges(removed: tuple[int, ...]) -> str:
    """(20, 21, 22, 27) → '20-22,27' (how a removed set is shown and typed)."""
    runs: list[list[int]] = []
    for layer in sorted(removed):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def rule_depth(params: GenerationParams, n_layers: int) -> tuple[GenerationParams, int | None]:
    """(the params as keyed on an ``n_layers`` model, the one layer count the rule fixes or None when
    the depths asked for apply): L for speculative decoding (the full model verifies every token), the
    count kept for block removal, whose removed set is checked and canonicalised (a suffix is truncation)."""
    if params.speculative:
        return params, n_layers
    if params.drop_layers:
        kept, removed = canonical_removal(check_drop(params.drop_layers, n_layers), n_layers)
        return replace(params, drop_layers=removed), kept
    return params, None
