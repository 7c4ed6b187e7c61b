"""What per-token early exit could realise at best on this machine: the ceiling a decoding loop with no
routing or scoring overhead would reach for a run's own exits, from costs measured here.

The costs come from the real decoding path (``engine.generation.generate``, EOS switched off so every
row decodes every step), timed in interleaved rounds like every bench figure:
- a decoding step with k layers at n rows: s(k, n) = (a run of M tokens − a run of 1 token) / (M − 1),
  static truncation at k on n prompts;
- one layer at n rows: (s(L, n) − s(1, n)) / (L − 1); a step outside the layers (embedding, final
  norm, LM head, token choice): s(1, n) − one layer;
- keys and values alone at n rows: a saturation rule with threshold −1 (the cosine's floor) exits every
  token at layer 1, so layers 2..L only write keys and values: (its step − s(1, n)) / (L − 1).
Each is fitted as fixed + per row over the measured row counts (least squares).

The ceiling replays a run's exits step by step: layer l runs on the rows whose token exits at l or
above, the rows that exited below l write keys and values only, nothing else (no score, no exit head,
no split); the static run is costed the same way at full depth. Both keep the measured prefill (the
prompt runs at full depth for every rule). Its realisation is what a perfect router would show on this
machine; the measured realisation over it is the share of the reachable saving the loop realises.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Linear:
    """A cost in seconds: ``fixed`` per call plus ``per_row`` per row; nothing for no rows."""

    fixed: float
    per_row: float

    def __call__(self, rows: int) -> float:
        return self.fixed + self.per_row * rows if rows > 0 else 0.0

    def in_microseconds(self) -> str:
        return f"{self.fixed * 1e6:.0f} µs + {self.per_row * 1e6:.1f} µs/row"


def fit(points: dict[int, float]) -> Linear:
    """Least-squares fixed + per-row line through (rows, seconds)."""
    rows, seconds = list(points), list(points.values())
    mean_rows, mean_seconds = statistics.fmean(rows), statistics.fmean(seconds)
    spread_rows = sum((r - mean_rows) ** 2 for r in rows)
    slope = (
        sum((r - mean_rows) * (s - mean_seconds) for r, s in zip(rows, seconds, strict=True)) / spread_rows
    )
    return Linear(mean_seconds - slope * mean_rows, slope)


@dataclass(frozen=True)
class StepCosts:
    layer: Linear  # one decoder layer, whole, at n rows
    keys_values: Linear  # one layer's keys and values alone, at n rows
    outside: Linear  # a decoding step outside the layers, at n rows

    def describe(self) -> str:
        return (
            f"a layer {self.layer.in_microseconds()}, keys/values alone "
            f"{self.keys_values.in_microseconds()}, a step outside the layers "
            f"{self.outside.in_microseconds()}"
        )


def step_exits(token_exit_layers: Sequence[Sequence[int]]) -> list[list[int]]:
    """Per decoding step (token 1 on: token 0 comes from the prefill), the exit layer of each row still
    decoding then (a row whose answer ended earlier has left the batch)."""
    longest = max((len(exits) for exits in token_exit_layers), default=0)
    return [[exits[t] for exits in token_exit_layers if len(exits) > t] for t in range(1, longest)]


def compute_fractions(token_exit_layers: Sequence[Sequence[int]], n_layers: int) -> tuple[float, float]:
    """The counted compute fraction c (mean exit layer ÷ L) over every token, and over the tokens of the
    decoding steps alone (token 1 on: the first comes from the prefill)."""
    tokens = sum(map(len, token_exit_layers))
    later = [layer for exits in token_exit_layers for layer in exits[1:]]
    return (
        sum(map(sum, token_exit_layers)) / max(1, tokens) / n_layers,
        sum(later) / max(1, len(later)) / n_layers,
    )


def rows_per_layer(steps: Sequence[Sequence[int]], n_layers: int) -> list[float]:
    """Mean rows that run layer l (1..L) per step: those whose token exits at l or above."""
    return [
        statistics.fmean(sum(1 for e in exits if e >= layer) for exits in steps)
        for layer in range(1, n_layers + 1)
    ]


def ideal_step(exits: Sequence[int], n_layers: int, costs: StepCosts) -> float:
    """One step with nothing but the work: whole layers for climbing rows, keys/values for exited ones."""
    seconds = costs.outside(len(exits))
    for layer in range(1, n_layers + 1):
        climbing = sum(1 for e in exits if e >= layer)
        seconds += costs.layer(climbing) + costs.keys_values(len(exits) - climbing)
    return seconds


def ceiling(
    exit_run: Sequence[Sequence[int]],
    static_run: Sequence[Sequence[int]],
    n_layers: int,
    costs: StepCosts,
    prefill: float,
) -> tuple[float, float]:
    """(whole-run, decoding-steps-only) realisation a loop with no overhead would show for ``exit_run``'s
    exits (per answer, each token's exit layer) against ``static_run`` (per answer, L per token)."""
    exit_steps, static_steps = step_exits(exit_run), step_exits(static_run)
    decode_exit = sum(ideal_step(exits, n_layers, costs) for exits in exit_steps)
    decode_static = sum(ideal_step(exits, n_layers, costs) for exits in static_steps)
    tokens_exit, tokens_static = sum(map(len, exit_run)), sum(map(len, static_run))
    c, c_later = compute_fractions(exit_run, n_layers)
    whole = (tokens_exit / (prefill + decode_exit)) / (tokens_static / (prefill + decode_static)) * c
    decoding = (
        (sum(map(len, exit_steps)) / decode_exit) / (sum(map(len, static_steps)) / decode_static) * c_later
    )
    return whole, decoding


def measure_costs(
    loaded,
    prompts_for: Callable[[int], list[str]],
    params,
    rounds: int,
    row_counts: Sequence[int],
) -> StepCosts:
    """Layer, keys/values and outside-the-layers costs, timed through ``generate`` (see the module)."""
    from timing import interleaved  # the bench's folder is on the path when a bench runs

    from engine.generation import generate

    no_eos = replace(loaded, eos_token_ids=())  # every row decodes every step: known row counts
    n_layers, steps = loaded.n_layers, params.max_new_tokens - 1
    all_exit_at_1 = replace(params, exit_policy="saturation", threshold=-1.0, min_layers=1)
    runs: dict[str, Callable[[], object]] = {}
    for n in row_counts:
        prompts = prompts_for(n)
        for name, layers, run_params in (
            ("full", [n_layers], params),
            ("one", [1], params),
            ("kv", [], all_exit_at_1),
        ):
            runs[f"{name} {n}"] = lambda p=prompts, d=layers, q=run_params: generate(no_eos, p, d, q)
            runs[f"{name} {n} first"] = lambda p=prompts, d=layers, q=run_params: generate(
                no_eos, p, d, replace(q, max_new_tokens=1)
            )
    seconds = {name: statistics.median(times) for name, times in interleaved(runs, rounds).items()}

    def step(name: str, n: int) -> float:
        return (seconds[f"{name} {n}"] - seconds[f"{name} {n} first"]) / steps

    layer = {n: (step("full", n) - step("one", n)) / (n_layers - 1) for n in row_counts}
    kv = {n: (step("kv", n) - step("one", n)) / (n_layers - 1) for n in row_counts}
    outside = {n: step("one", n) - layer[n] for n in row_counts}
    return StepCosts(fit(layer), fit(kv), fit(outside))
