"""The early-exit ceiling the bench prints (bench/exit_ceiling.py): its arithmetic against hand-worked
cases. Its timings are not tested (the bench prints figures; tests never assert on timings)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "bench" / "exit_ceiling.py"
_SPEC = importlib.util.spec_from_file_location("exit_ceiling", _PATH)
exit_ceiling = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = exit_ceiling  # its dataclasses look their module up there
_SPEC.loader.exec_module(exit_ceiling)
Linear, StepCosts = exit_ceiling.Linear, exit_ceiling.StepCosts


def test_fit_recovers_a_line_and_averages_symmetric_noise():
    line = exit_ceiling.fit({1: 7.0, 2: 9.0, 4: 13.0, 8: 21.0})  # 5 + 2 per row
    assert line.fixed == pytest.approx(5.0) and line.per_row == pytest.approx(2.0)
    noisy = exit_ceiling.fit({0: 1.0 + 0.5, 1: 2.0 - 0.5, 2: 3.0 - 0.5, 3: 4.0 + 0.5})  # 1 + 1 per row
    # by hand: x̄ 1.5, ȳ 2.5, Σ(x−x̄)(y−ȳ) = 5 = Σ(x−x̄)²: slope 1, intercept 1
    assert noisy.fixed == pytest.approx(1.0) and noisy.per_row == pytest.approx(1.0)


def test_a_cost_is_nothing_for_no_rows():
    assert Linear(5.0, 2.0)(0) == 0.0 and Linear(5.0, 2.0)(3) == 11.0


def test_steps_hold_the_rows_still_decoding():
    # answer A: 3 tokens exiting at 8, 5, 6; answer B: 2 tokens (it ended) at 8, 7
    assert exit_ceiling.step_exits([[8, 5, 6], [8, 7]]) == [[5, 7], [6]]
    assert exit_ceiling.rows_per_layer([[5, 7], [6]], 8) == [1.5, 1.5, 1.5, 1.5, 1.5, 1.0, 0.5, 0.0]


def test_an_ideal_step_pays_layers_for_climbing_rows_and_keys_values_for_exited_ones():
    costs = StepCosts(layer=Linear(10.0, 1.0), keys_values=Linear(4.0, 0.5), outside=Linear(1.0, 0.0))
    # rows exit at 8 and 3: layers 1-3 run 2 rows (12 each); layers 4-8 run 1 row (11) plus one row's
    # keys/values (4.5); outside the layers 1
    assert exit_ceiling.ideal_step([8, 3], 8, costs) == pytest.approx(1 + 3 * 12 + 5 * (11 + 4.5))


def test_with_costs_proportional_to_rows_the_ceiling_realises_everything():
    costs = StepCosts(layer=Linear(0.0, 1.0), keys_values=Linear(0.0, 0.0), outside=Linear(0.0, 0.0))
    exits = [[8, 2, 5, 8], [8, 3, 3, 4], [8, 8]]
    static = [[8] * len(answer) for answer in exits]
    whole, decoding = exit_ceiling.ceiling(exits, static, 8, costs, prefill=0.0)
    assert decoding == pytest.approx(1.0)
    # whole run: the first tokens (from the prefill) cost nothing here but count in c and in tokens/s;
    # tokens 10 either way, decode work exit 2+5+8+3+3+4+8 = 33 row-layers vs static 7 × 8 = 56
    c = (8 + 2 + 5 + 8 + 8 + 3 + 3 + 4 + 8 + 8) / 10 / 8
    assert whole == pytest.approx((10 / 33) / (10 / 56) * c)


def test_a_fixed_cost_per_layer_keeps_the_ceiling_below_one():
    costs = StepCosts(layer=Linear(1.0, 1.0), keys_values=Linear(0.0, 0.0), outside=Linear(0.0, 0.0))
    exits = [[8, 2, 2], [8, 8, 8]]  # step 1: rows at 2 and 8; step 2: the same
    static = [[8] * 3, [8] * 3]
    _, decoding = exit_ceiling.ceiling(exits, static, 8, costs, prefill=0.0)
    # per step: exit layers 1-2 cost 1 + 2, layers 3-8 cost 1 + 1 → 6 + 12 = 18; static 8 × 3 = 24;
    # tokens per step the same, c (decoding steps) = (2 + 8) / 2 / 8
    assert decoding == pytest.approx(24 / 18 * (10 / 16))
