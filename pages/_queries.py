"""Cached reads for the pages (``st.cache_data``, keyed by the database path and arguments).

Every write from a page or a finished job calls :func:`clear_data`, so no page shows stale numbers;
reads of the database also expire after a few seconds, so rows a CLI sweep writes meanwhile appear.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from engine import queries, report
from engine.datasets import BUILTIN_SETS, load_prompt_set, prompt_set_available
from engine.judges.names import KEYWORD
from engine.store import StoreError
from engine.types import Completion, ModelInfo, Prompt, Verdict
from pages._charts import model_labels
from pages._store import open_store

STORE_TTL_S = 5  # seconds a page trusts a cached read while another process may be writing


def clear_data() -> None:
    st.cache_data.clear()


@st.cache_data(show_spinner=False, max_entries=32)
def prompts_of(prompt_set: str) -> list[Prompt]:
    return load_prompt_set(prompt_set)


@st.cache_data(show_spinner=False)
def available_sets() -> list[str]:
    """The built-in prompt sets whose files are present in this checkout."""
    return [name for name in BUILTIN_SETS if prompt_set_available(name)]


@st.cache_data(ttl=STORE_TTL_S, show_spinner=False, max_entries=16)
def asr_rows(
    db: str,
    judge: str | None = None,
    prompt_sets: tuple[str, ...] | None = None,
    include_copyright: bool = False,
    scope: str | None = None,
) -> list[report.AsrRow]:
    return report.asr_rows(
        open_store(db), judge, prompt_sets=prompt_sets, include_copyright=include_copyright, scope=scope
    )


@st.cache_data(ttl=STORE_TTL_S, show_spinner=False, max_entries=32)
def settings_scopes(
    db: str, model_hash: str | None, prompt_sets: tuple[str, ...] | None
) -> list[queries.ScopeSummary]:
    return queries.settings_scopes(open_store(db), model_hash, prompt_sets)


@st.cache_data(ttl=STORE_TTL_S, show_spinner=False, max_entries=16)
def earlier_set_versions(db: str, name: str) -> list[tuple[str, str]]:
    """(shown name, description) of the set's earlier versions (an edited file); none without a database."""
    try:
        return queries.earlier_set_versions(open_store(db), name)
    except StoreError:
        return []


@st.cache_data(ttl=STORE_TTL_S, show_spinner=False, max_entries=16)
def category_rows(
    db: str, judge: str | None = None, prompt_sets: tuple[str, ...] | None = None
) -> list[report.CategoryRow]:
    return report.category_rows(open_store(db), judge, prompt_sets)


@dataclass(frozen=True)
class Answers:
    """One prompt's stored completions by depth, and every judge's verdict on them."""

    completions: dict[int, Completion]
    verdicts: dict[str, dict[str, Verdict]]  # completion key -> judge -> verdict

    def verdicts_at(self, layers: int) -> dict[str, Verdict]:
        completion = self.completions.get(layers)
        return self.verdicts.get(completion.key, {}) if completion else {}


NO_ANSWERS = Answers({}, {})


@st.cache_data(ttl=STORE_TTL_S, show_spinner=False, max_entries=256)
def answers(db: str, model_hash: str, prompt: Prompt, layers: tuple[int, ...], params_hash: str) -> Answers:
    """Stored answers to one prompt; the keyword verdict is computed on the fly where none is stored."""
    store = open_store(db)
    completions = queries.stored_completions(store, model_hash, prompt, layers, params_hash)
    verdicts = queries.latest_verdicts(store, [c.key for c in completions.values()])
    for key, verdict in queries.keyword_verdicts(prompt, completions.values()).items():
        verdicts.setdefault(key, {}).setdefault(KEYWORD, verdict)
    return Answers(completions, verdicts)


@st.cache_data(ttl=STORE_TTL_S, show_spinner=False, max_entries=16)
def truncated_prompt_counts(db: str) -> tuple[int, int]:
    """(stored answers whose prompt was cut to fit the model's context, all stored answers)."""
    return open_store(db).truncated_prompt_counts()


@st.cache_data(ttl=STORE_TTL_S, show_spinner=False, max_entries=16)
def stored_models(db: str) -> list[ModelInfo]:
    return open_store(db).list_models()


@st.cache_data(ttl=STORE_TTL_S, show_spinner=False, max_entries=16)
def judges_in_store(db: str) -> list[str]:
    return queries.judges_in_store(open_store(db))


@st.cache_data(ttl=STORE_TTL_S, show_spinner=False, max_entries=16)
def agreement_rows(
    db: str, judge_a: str, judge_b: str, prompt_sets: tuple[str, ...] | None = None, scope: str | None = None
) -> list[report.AgreementRow]:
    return report.agreement_rows(open_store(db), judge_a, judge_b, prompt_sets, scope)


@st.cache_data(ttl=STORE_TTL_S, show_spinner=False, max_entries=16)
def disagreements(
    db: str, judge_a: str, judge_b: str, prompt_sets: tuple[str, ...] | None = None, scope: str | None = None
) -> pd.DataFrame:
    return report.disagreements(open_store(db), judge_a, judge_b, prompt_sets, scope)


@st.cache_data(ttl=STORE_TTL_S, show_spinner=False, max_entries=16)
def probe_table(db: str, model_hash: str, set_id: str) -> pd.DataFrame:
    return queries.probe_table(open_store(db).get_probe_results(model_hash=model_hash, set_id=set_id))


@st.cache_data(ttl=STORE_TTL_S, show_spinner=False, max_entries=16)
def probe_baselines(db: str, model_hash: str, set_id: str) -> dict[str, float]:
    return queries.probe_baselines(open_store(db).get_probe_results(model_hash=model_hash, set_id=set_id))


@st.cache_data(ttl=STORE_TTL_S, show_spinner=False, max_entries=16)
def stored_layers(db: str, model_hash: str) -> list[int]:
    return queries.stored_layers(open_store(db), model_hash)


def model_names(db: str) -> dict[str, str]:
    """model_hash -> the model's name for people, distinct across the stored models, for tables keyed by
    hash."""
    infos = stored_models(db)
    names = model_labels(info.model_id for info in infos)
    return {info.model_hash: names[info.model_id] for info in infos}
