"""Small read-side helpers the dashboard needs on top of the store, the report and the probes.

No SQL (the store speaks it), no torch (the pages import this module at start-up): everything here
combines existing store methods and DataFrames. Model-file facts live in ``engine.modelfiles``, the
lag rules in ``engine.lag``, prompt records in ``engine.types``.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engine import lag
from engine.judges.base import JudgeItem
from engine.judges.keyword import KeywordJudge
from engine.judges.names import JUDGE_ORDER
from engine.lag import LagSummary
from engine.probes.baselines import BASELINE_KIND_PREFIX
from engine.probes.directions import cosine_matrix
from engine.scopes import SettingsScope
from engine.sweep.judging import judge_stored
from engine.types import Completion, ModelInfo, Prompt, Verdict, completion_key, model_input, prompt_from_text

if TYPE_CHECKING:
    from engine.executors import Executor
    from engine.report import AsrRow
    from engine.store import Store

# ---------------------------------------------------------------- models, without loading them


def known_model(store: Store, name: str) -> ModelInfo | None:
    """The most recently stored ModelInfo whose model_id is ``name`` (None if never stored); a local
    folder matches however it was written (relative or absolute), since the CLI and the dashboard may
    name the same folder differently."""
    matches = [info for info in store.list_models() if info.model_id == name]
    if not matches:
        folder = _local_folder(name)
        matches = [info for info in store.list_models() if folder and _local_folder(info.model_id) == folder]
    return matches[-1] if matches else None


def _local_folder(model_id: str) -> Path | None:
    path = Path(model_id).expanduser()
    try:
        return path.resolve() if path.exists() else None
    except OSError:  # an id that cannot be a path (too long, bad characters): a hub id
        return None


# ---------------------------------------------------------------- prompts and completions


def stored_completions(
    store: Store, model_hash: str, prompt: Prompt, layers: Iterable[int], params_hash: str
) -> dict[int, Completion]:
    """The completions already stored for this prompt at these depths, by layer count."""
    text = model_input(prompt)
    found = {}
    for k in dict.fromkeys(int(k) for k in layers):
        completion = store.get_completion(completion_key(model_hash, text, k, params_hash))
        if completion is not None:
            found[k] = completion
    return found


def latest_verdicts(store: Store, keys: Iterable[str]) -> dict[str, dict[str, Verdict]]:
    """completion key -> judge name -> its verdict (the last version in the store's order)."""
    by_key: dict[str, dict[str, Verdict]] = defaultdict(dict)
    for verdict in store.verdicts_for(list(keys)):
        by_key[verdict.completion_key][verdict.judge] = verdict
    return dict(by_key)


def keyword_verdicts(prompt: Prompt, completions: Iterable[Completion]) -> dict[str, Verdict]:
    """The keyword judge on the fly (pure Python, microseconds): completion key -> verdict."""
    items = [
        JudgeItem(c.key, prompt.text, c.text, context=prompt.context, tags=prompt.tags) for c in completions
    ]
    return {v.completion_key: v for v in KeywordJudge().judge(items)} if items else {}


def earlier_set_versions(store: Store, name: str) -> list[tuple[str, str]]:
    """(shown name, description) of each earlier version of the set ``name`` (an edited file), newest
    first: reports show the current version unless one of these is asked for by its shown name."""
    versions = [v for v in store.list_prompt_set_versions() if v.name == name and not v.is_current]
    return [
        (v.shown_name, f"earlier version {v.version} of {v.n_versions} ({v.n_prompts} prompts)")
        for v in sorted(versions, key=lambda v: v.version, reverse=True)
    ]


def prompts_in_store(store: Store) -> list[Prompt]:
    """Every prompt of every stored prompt set, each model input once."""
    seen: dict[str, Prompt] = {}
    for info in store.list_prompt_sets():
        for prompt in store.get_prompts(info.set_id):
            seen.setdefault(model_input(prompt), prompt)
    return list(seen.values())


def judge_all_stored(
    store: Store,
    judges: Sequence,
    *,
    on_batch: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    executor: Executor | None = None,
) -> int:
    """Judge every stored completion (all models, depths and parameters) the judges have not seen.

    Completions of typed prompts (in no stored set) are judged against their own text.
    ``on_batch(done, total)`` counts completions per judge pass. Returns verdicts written.
    With an ``executor`` (judges from its ``build_judge``) the judging runs where it runs (Ray actors).
    """
    completions = store.get_generations()
    prompts = prompts_in_store(store)
    inputs = {model_input(p) for p in prompts}
    prompts += [
        prompt_from_text(text)
        for text in dict.fromkeys(c.prompt_text for c in completions)
        if text not in inputs
    ]
    groups: dict[tuple[str, str], set[int]] = defaultdict(set)
    for c in completions:
        groups[(c.model_hash, c.params_hash)].add(c.layers)
    total, done, written = len(completions) * len(judges), 0, 0

    def count(n: int) -> None:
        nonlocal done
        done += n
        if on_batch:
            on_batch(done, total)

    for (model_hash, params_hash), layers in groups.items():
        if stop is not None and stop.is_set():
            break
        written += judge_stored(
            store, judges, prompts, model_hash, sorted(layers), params_hash, on_batch=count, executor=executor
        )
    return written


def stored_layers(store: Store, model_hash: str) -> list[int]:
    """Depths (layer counts) with stored completions for a model: the truncation depths swept."""
    return sorted({c.layers for c in store.get_generations(model_hash=model_hash)})


def judges_in_store(store: Store) -> list[str]:
    """Judge names with at least one verdict, in the usual order."""
    order = {name: rank for rank, name in enumerate(JUDGE_ORDER)}
    names = {v.judge for v in store.verdicts_for()}
    return sorted(names, key=lambda name: (order.get(name, 9), name))


# ---------------------------------------------------------------- generation-settings scopes


@dataclass(frozen=True)
class ScopeSummary:
    """One generation-settings scope with stored answers: how many, and how much of the set they cover."""

    scope: SettingsScope
    n_answers: int
    n_prompts: int  # the set's prompts with at least one answer in this scope (the best-covered rule)
    set_size: int  # prompts in the set(s)

    @property
    def key(self) -> str:
        return self.scope.key

    @property
    def covers_set(self) -> bool:
        return self.n_prompts >= self.set_size

    def label(self) -> str:
        """'64 new tokens · greedy · chat template (24 of 24 prompts, 168 answers)'."""
        answers = f"{self.n_answers} answer{'s' if self.n_answers != 1 else ''}"
        return f"{self.scope.describe()} ({self.n_prompts} of {self.set_size} prompts, {answers})"


def settings_scopes(
    store: Store, model_hash: str | None = None, prompt_sets: Sequence[str] | None = None
) -> list[ScopeSummary]:
    """The generation-settings scopes with stored answers for a model (every model: None) and prompt
    sets (every set: None), the most answers first: the first is the default scope to show."""
    frame = store.settings_counts(model_hash=model_hash, prompt_sets=prompt_sets)
    sizes = store.set_label_counts().groupby("prompt_set")["n_prompts"].sum().to_dict()
    answers: dict[str, int] = defaultdict(int)
    covered: dict[tuple[str, str], int] = defaultdict(int)  # (scope, set) -> prompts answered
    scopes: dict[str, SettingsScope] = {}
    for r in frame.itertuples(index=False):
        scope = SettingsScope.from_json(r.params if isinstance(r.params, str) else None)
        scopes[scope.key] = scope
        answers[scope.key] += int(r.n_answers)
        covered[(scope.key, r.prompt_set)] = max(covered[(scope.key, r.prompt_set)], int(r.n_prompts))
    summaries = []
    for key, scope in scopes.items():
        in_sets = {s: n for (k, s), n in covered.items() if k == key}
        summaries.append(
            ScopeSummary(
                scope,
                answers[key],
                sum(in_sets.values()),
                sum(int(sizes.get(s, 0)) for s in in_sets),
            )
        )
    return sorted(summaries, key=lambda s: (-s.n_answers, s.scope.describe()))


def refusal_by_depth(
    rows: Iterable[AsrRow], model_hash: str, prompt_set: str | None = None, scope: str | None = None
) -> dict[int, float]:
    """Layers k -> share of harmful prompts refused when the model is truncated at k: static truncation
    with the raw head only (early-exit rows keep all L layers and must not stand in for k = L), one
    prompt set and scope (the row with the most prompts where several remain)."""
    best: dict[int, AsrRow] = {}
    for row in rows:
        if row.model_hash != model_hash or not row.n or not row.is_truncation:
            continue
        if (prompt_set is not None and row.prompt_set != prompt_set) or (
            scope is not None and row.scope != scope
        ):
            continue
        if row.layers not in best or row.n > best[row.layers].n:
            best[row.layers] = row
    return {k: best[k].refusal_rate for k in sorted(best)}


# ---------------------------------------------------------------- probes


_PROBE_EXTRA_COLUMNS = (
    "depth_percent",
    "refusal_mass_harmful",
    "refusal_mass_benign",
    "refusal_p_value",
    "beats_baselines",
    "best_baseline",
    "baseline_gain",
    "baseline_p_value",
    "training_overlap",
)


def probe_table(records: Sequence) -> pd.DataFrame:
    """One row per layer from stored probe records (kinds "logreg" and "diff-of-means" side by side;
    the content baselines, which read no layer, are ``probe_baselines``')."""
    rows: dict[int, dict] = {}
    for r in records:
        if r.kind.startswith(BASELINE_KIND_PREFIX):
            continue
        row = rows.setdefault(int(r.layer), {"layer": int(r.layer)})
        extra = dict(r.extra)
        for name in _PROBE_EXTRA_COLUMNS:
            if name in extra:
                row[name] = extra[name]
        row["n_prompts"] = extra.get("n_prompts", row.get("n_prompts"))
        if r.kind == "logreg":
            row.update(accuracy=r.accuracy, accuracy_std=r.accuracy_std, auroc=r.auroc)
            row["direction_ref"] = extra.get("direction_ref")
        elif r.kind == "diff-of-means":
            row["dom_accuracy"] = r.accuracy
    frame = pd.DataFrame([rows[k] for k in sorted(rows)])
    return frame


def probe_baselines(records: Sequence) -> dict[str, float]:
    """Content-baseline accuracies (mean over folds) by baseline name, from stored probe records."""
    return {
        r.kind.removeprefix(BASELINE_KIND_PREFIX): float(r.accuracy)
        for r in records
        if r.kind.startswith(BASELINE_KIND_PREFIX)
    }


def lag_view(table: pd.DataFrame, n_layers: int) -> LagSummary:
    """The alignment lag from a ``probe_table``: the ``engine.lag`` rules on its stored columns (each
    layer's stored verdict against the content baselines; results stored before baselines existed
    have none, so no harm-detection layer)."""

    def column(name: str) -> list:
        return list(table[name]) if name in table else [None] * len(table)

    layers = [int(layer) for layer in table["layer"]] if "layer" in table else []
    return LagSummary(
        n_layers,
        lag.harm_detection_layer(layers, column("beats_baselines")),
        lag.refusal_emergence_layer(
            layers,
            column("refusal_mass_harmful"),
            column("refusal_mass_benign"),
            column("refusal_p_value"),
        ),
    )


def probe_cosines(table: pd.DataFrame, cache_dir: Path | str) -> np.ndarray | None:
    """Cosine matrix of the per-layer logistic-probe directions, from the saved direction file."""
    refs = [ref for ref in table.get("direction_ref", pd.Series(dtype=object)) if isinstance(ref, str)]
    if not refs:
        return None
    path = Path(cache_dir) / refs[0].split("#", 1)[0]
    try:
        with np.load(path, allow_pickle=False) as saved:
            return cosine_matrix(np.asarray(saved["probe"], dtype=np.float64))
    except (OSError, KeyError, ValueError):
        return None
