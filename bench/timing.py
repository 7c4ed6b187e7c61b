"""Timing helpers shared by the benches: interleaved rounds and a median with its range.

Machines here are shared: one timing per contender lies, so every figure is a median over rounds in
which the contenders take turns (A B C A B C …), and a load change hits them all alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def spread(values: list[float]) -> str:
    """Median with its min–max over the rounds."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def timed(func: Callable, *args, **kwargs):
    """``func``'s result and its wall time in seconds (CUDA work included: synchronised on both ends)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    began = time.perf_counter()
    result = func(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - began


def interleaved(
    contenders: dict[str, Callable[[], object]], rounds: int, warm_up: bool = True
) -> dict[str, list[float]]:
    """Seconds per round of each contender, run A B C A B C … (after one warm-up call each unless the
    caller already ran them), so a load change on a shared machine hits every contender alike."""
    for run in contenders.values() if warm_up else ():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            seconds[name].append(timed(run)[1])
    return seconds
