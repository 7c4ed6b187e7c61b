"""Running (or resuming) a sweep: load each model, generate what is missing, judge it, report progress."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from engine.datasets import load_prompt_set
from engine.depths import rule_depth
from engine.errors import UserInputError
from engine.executors.base import ExecutorStopped
from engine.judges.base import Judge
from engine.judges.names import HARMBENCH, HUMAN
from engine.judges.registry import get_judge
from engine.lenses.files import exit_variants_for

from .generating import generate_missing
from .judging import judge_stored
from .spec import SweepProgress, SweepSpec, SweepSummary

if TYPE_CHECKING:
    from engine.executors import Executor


def build_judges(
    names: Iterable[str], judge_model: str | None, executor: Executor | None = None
) -> list[Judge]:
    """The judges by name, built by ``executor`` when given (a Ray executor loads classifiers on actors)."""
    judges = []
    for name in names:
        if name == HARMBENCH and not judge_model:
            raise UserInputError(
                "the harmbench judge needs --judge-model: a local folder with the HarmBench classifier "
                "(e.g. cais/HarmBench-Llama-2-13b-cls downloaded with `hf download`)"
            )
        if name == HUMAN:
            raise UserInputError("human labels are given in the dashboard or with `python -m engine label`")
        if executor is not None:
            judges.append(executor.build_judge(name, judge_model=judge_model))
        else:
            judges.append(get_judge(name, judge_model=judge_model))
    return judges


class _StageClock:
    """One stage at a time: its own total (only the work still to do) and clock, so rate and ETA are true."""

    def __init__(self, progress: Callable[[SweepProgress], None] | None) -> None:
        self.progress = progress
        self.model, self.name, self.done, self.total = "", "", 0, 0
        self.began = time.perf_counter()

    def report(self) -> None:
        if self.progress:
            elapsed = time.perf_counter() - self.began
            self.progress(SweepProgress(self.model, self.name, self.done, self.total, elapsed))

    def begin(self, model: str, name: str, total: int) -> None:
        self.model, self.name, self.done, self.total = model, name, 0, total
        self.began = time.perf_counter()
        self.report()

    def advance(self, n: int) -> None:
        self.done += n
        self.report()


def run_sweep(
    spec: SweepSpec,
    store,
    *,
    progress: Callable[[SweepProgress], None] | None = None,
    stop: threading.Event | None = None,
    load: Callable[[str], object] | None = None,
    executor: Executor | None = None,
) -> SweepSummary:
    """Run (or resume) a sweep into ``store``.

    ``executor`` says where generation runs (default: this process, where ``load`` maps a model name to
    a LoadedModel); this function alone decides what is missing and writes to the store.
    """
    from engine.executors.local import LocalExecutor  # torch only on first load (see generating.py)

    executor = executor or LocalExecutor(load=load)
    prompts = load_prompt_set(spec.prompt_set, limit=spec.limit)
    saved_set = store.save_prompt_set(spec.prompt_set, prompts, source=spec.prompt_set)
    judges = build_judges(spec.judges, spec.judge_model, executor)
    run_id = store.start_run(spec.run_parameters(saved_set.set_id))
    generated = cached = verdicts = 0
    clock = _StageClock(progress)

    def judged(n: int) -> None:
        store.heartbeat(run_id)  # judging stores verdicts, not generations: say the run is alive
        clock.advance(n)

    try:
        for name in spec.models:
            clock.begin(name, "loading", 1)
            try:
                loaded = executor.load(name)
            except ExecutorStopped:  # Stop pressed while Ray workers were still starting
                break
            try:
                store.save_model(loaded.info)
                store.heartbeat(run_id)  # loading a large model can take long
                layers = spec.layers_for(loaded.n_layers)
                params = rule_depth(spec.params, loaded.n_layers)[0]  # the removed set as keyed
                new, already = generate_missing(
                    store, loaded, prompts, layers, params, thresholds=spec.thresholds or None,
                    run_id=run_id, rows_per_batch=spec.rows_per_batch, stop=stop, executor=executor,
                    on_batch=lambda batch: clock.advance(len(batch)),
                    on_start=lambda total, name=name: clock.begin(name, "generating", total),
                )  # fmt: skip
            finally:
                executor.release(loaded)
            generated, cached = generated + new, cached + already
            if stop is not None and stop.is_set():
                break
            verdicts += judge_stored(
                store, judges, prompts, loaded.info.model_hash, layers,
                [v.key() for v in exit_variants_for(loaded.info.model_hash, params, spec.thresholds)],
                on_batch=judged, on_start=lambda total, name=name: clock.begin(name, "judging", total),
                executor=executor,
            )  # fmt: skip
            clock.begin(name, "done", 0)
    except BaseException:
        store.finish_run(run_id, "interrupted")
        raise
    stopped = stop is not None and stop.is_set()
    store.finish_run(run_id, "stopped" if stopped else "done")
    return SweepSummary(run_id, generated, cached, verdicts, stopped)
