"""Sweeps: models × prompts × depths, generated where missing, judged, stored batch by batch.

What is already in the store is never recomputed, each finished batch is written at once in its own
transaction, so an interrupted sweep (Ctrl-C, a crash, a killed process) resumes where it stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.depths import DEFAULT_DEPTHS, check_layers, layers_from_percent
from engine.types import Completion, GenerationParams, Prompt

if TYPE_CHECKING:
    from engine.executors import Executor

log = logging.getLogger(__name__)

JUDGE_BATCH = 64


@dataclass(frozen=True)
class SweepSpec:
    """Everything that defines a sweep. Depths as percentages unless ``layers`` is given."""

    models: tuple[str, ...]
    prompt_set: str = "demo"
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    layers: tuple[int, ...] | None = None
    judges: tuple[str, ...] = ("keyword",)
    judge_model: str | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    limit: int | None = None
    rows_per_batch: int | None = None

    def layers_for(self, n_layers: int) -> list[int]:
        if self.layers:
            return list(dict.fromkeys(check_layers(int(k), n_layers) for k in self.layers))
        return list(dict.fromkeys(layers_from_percent(d, n_layers) for d in self.depths))


@dataclass(frozen=True)
class SweepProgress:
    model: str
    stage: str  # "loading", "generating", "judging", "done"
    done: int
    total: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


@dataclass(frozen=True)
class SweepSummary:
    run_id: str
    generated: int  # new completions written
    cached: int  # completions that were already stored
    verdicts: int  # new verdicts written
    stopped: bool  # True when ``stop`` was set before the end


def model_input(prompt: Prompt) -> str:
    """What the model is asked: HarmBench puts a contextual behaviour's context above it."""
    return f"{prompt.context}\n\n---\n\n{prompt.text}" if prompt.context else prompt.text


def _prompt_key(prompt: Prompt) -> str:
    from engine.store import prompt_key

    return prompt_key(prompt.text, prompt.context)


def _as_model_prompts(prompts: Sequence[Prompt]) -> list[Prompt]:
    """The same prompts with ``text`` replaced by the model's input (the completion key's text)."""
    from dataclasses import replace

    return [replace(p, text=model_input(p)) if p.context else p for p in prompts]


def _missing_by_prompt(
    store, model_hash: str, inputs: Sequence[Prompt], layers: Sequence[int], params_hash: str
):
    """Group what is missing by prompt: {tuple of missing layers: [prompt index, ...]}."""
    from engine.store import prompt_key

    index_of = {prompt_key(p.text): i for i, p in enumerate(inputs)}
    missing = store.missing_generations(model_hash, [p.text for p in inputs], layers, params_hash)
    per_prompt: dict[int, list[int]] = defaultdict(list)
    for key, k in missing:
        per_prompt[index_of[key]].append(k)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, ks in per_prompt.items():
        groups[tuple(sorted(ks, reverse=True))].append(index)
    return groups, sum(len(ks) for ks in per_prompt.values())


def generate_missing(
    store,
    loaded,
    prompts: Sequence[Prompt],
    layers: Sequence[int],
    params: GenerationParams,
    *,
    run_id: str | None = None,
    rows_per_batch: int | None = None,
    on_batch: Callable[[list[Completion]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    executor: Executor | None = None,
) -> tuple[int, int]:
    """Generate and store every (prompt, depth) not yet stored. Returns (new, already stored).

    ``loaded`` is the executor's handle for the model (a LoadedModel for the local executor).
    The executor computes; only this function writes, as each batch or chunk arrives.
    ``on_start`` hears how many rows are missing before the first batch (a progress bar's total).
    """
    from engine.executors import split_into_units
    from engine.executors.local import LocalExecutor

    executor = executor or LocalExecutor()
    inputs = _as_model_prompts(prompts)
    key_of_input = {p.text: _prompt_key(original) for p, original in zip(inputs, prompts, strict=True)}
    groups, n_missing = _missing_by_prompt(store, loaded.info.model_hash, inputs, layers, params.key())
    already = len(inputs) * len(layers) - n_missing
    if on_start:
        on_start(n_missing)
    by_layers = {group_layers: [inputs[i] for i in indices] for group_layers, indices in groups.items()}
    units = split_into_units(by_layers, executor.prompts_per_chunk)
    written = 0
    batches = executor.generate(loaded, units, params, rows_per_batch=rows_per_batch)
    try:
        for batch in batches:
            written += store.save_generations(
                batch, params=params, run_id=run_id, prompt_keys=[key_of_input[c.prompt_text] for c in batch]
            )
            if on_batch:
                on_batch(batch)
            if stop is not None and stop.is_set():
                break
    finally:
        batches.close()  # a stopped sweep leaves no generator (or worker call) behind
    return written, already


def judge_stored(
    store,
    judges: Sequence,
    prompts: Sequence[Prompt],
    model_hash: str,
    layers: Sequence[int],
    params_hash: str,
    *,
    on_batch: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> int:
    """Judge every stored completion of these prompts × depths that a judge version has not seen.

    ``on_start`` hears how many judgements are due (over all judges) before the first one.
    """
    from engine.judges import JudgeItem

    by_input = {model_input(p): p for p in prompts}
    completions = [
        c
        for c in store.get_generations(model_hash=model_hash, layers=list(layers), params_hash=params_hash)
        if c.prompt_text in by_input
    ]
    due = []
    for judge in judges:
        todo_keys = store.missing_verdicts([c.key for c in completions], judge.name, judge.version)
        due.append((judge, [c for c in completions if c.key in todo_keys]))
    if on_start:
        on_start(sum(len(todo) for _judge, todo in due))
    written = 0
    for judge, todo in due:
        for start in range(0, len(todo), JUDGE_BATCH):
            chunk = todo[start : start + JUDGE_BATCH]
            items = [
                JudgeItem(
                    completion_key=c.key,
                    behavior=by_input[c.prompt_text].text,
                    completion=c.text,
                    context=by_input[c.prompt_text].context,
                    tags=by_input[c.prompt_text].tags,
                )
                for c in chunk
            ]
            written += store.save_verdicts(judge.judge(items))
            if on_batch:
                on_batch(len(chunk))
    return written


def build_judges(names: Iterable[str], judge_model: str | None) -> list:
    from engine.judges import get_judge

    judges = []
    for name in names:
        if name == "harmbench" and not judge_model:
            raise ValueError(
                "the harmbench judge needs --judge-model: a local folder with the HarmBench classifier "
                "(e.g. cais/HarmBench-Llama-2-13b-cls downloaded with `hf download`)"
            )
        if name == "human":
            raise ValueError("human labels are given in the dashboard or with `python -m engine label`")
        judges.append(get_judge(name, judge_model=judge_model))
    return judges


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
    from engine.datasets import load_prompt_set
    from engine.executors.local import LocalExecutor

    executor = executor or LocalExecutor(load=load)
    prompts = load_prompt_set(spec.prompt_set, limit=spec.limit)
    saved_set = store.save_prompt_set(spec.prompt_set, prompts, source=spec.prompt_set)
    judges = build_judges(spec.judges, spec.judge_model)
    run_id = store.start_run(_run_parameters(spec, saved_set.set_id))
    generated = cached = verdicts = 0
    # One stage at a time: its own total (only the work still to do) and clock, so rate and ETA are true.
    stage = {"model": "", "name": "", "done": 0, "total": 0, "began": time.perf_counter()}

    def report() -> None:
        if progress:
            elapsed = time.perf_counter() - stage["began"]
            progress(SweepProgress(stage["model"], stage["name"], stage["done"], stage["total"], elapsed))

    def begin(model: str, name: str, total: int) -> None:
        stage.update(model=model, name=name, done=0, total=total, began=time.perf_counter())
        report()

    def advance(n: int) -> None:
        stage["done"] += n
        report()

    try:
        for name in spec.models:
            begin(name, "loading", 1)
            loaded = executor.load(name)
            try:
                store.save_model(loaded.info)
                layers = spec.layers_for(loaded.n_layers)
                new, already = generate_missing(
                    store, loaded, prompts, layers, spec.params,
                    run_id=run_id, rows_per_batch=spec.rows_per_batch,
                    on_batch=lambda batch: advance(len(batch)),
                    on_start=lambda total, name=name: begin(name, "generating", total), stop=stop,
                    executor=executor,
                )  # fmt: skip
            finally:
                executor.release(loaded)
            generated, cached = generated + new, cached + already
            if stop is not None and stop.is_set():
                break
            verdicts += judge_stored(
                store, judges, prompts, loaded.info.model_hash, layers, spec.params.key(), on_batch=advance,
                on_start=lambda total, name=name: begin(name, "judging", total),
            )  # fmt: skip
            begin(name, "done", 0)
    except BaseException:
        store.finish_run(run_id, "interrupted")
        raise
    stopped = stop is not None and stop.is_set()
    store.finish_run(run_id, "stopped" if stopped else "done")
    return SweepSummary(run_id, generated, cached, verdicts, stopped)


def _run_parameters(spec: SweepSpec, set_id: str) -> dict:
    from dataclasses import asdict

    return {**asdict(spec), "set_id": set_id, "params_hash": spec.params.key()}
