"""Sweeps: models × prompts × depths, generated where missing, judged, stored batch by batch.

What is already in the store is never recomputed, each finished batch is written at once in its own
transaction, so an interrupted sweep (Ctrl-C, a crash, a killed process) resumes where it stopped.

* ``spec``: the sweep's definition, progress and summary records (torch-free).
* ``judging``: judging stored completions with judges already built (torch-free).
* ``generating``: generating the missing rows (torch, loaded on first use).
* ``runner``: the whole run, model by model, with progress and stop.
"""

from __future__ import annotations

from engine.types import model_input

from .generating import generate_missing
from .judging import JUDGE_BATCH, judge_stored
from .runner import build_judges, run_sweep
from .spec import SweepProgress, SweepSpec, SweepSummary

__all__ = [
    "JUDGE_BATCH",
    "SweepProgress",
    "SweepSpec",
    "SweepSummary",
    "build_judges",
    "generate_missing",
    "judge_stored",
    "model_input",
    "run_sweep",
]
