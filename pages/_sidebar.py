"""The sidebar every page shares: model, prompt set, database and generation settings, the demo-model
builder and the background job's progress."""

from __future__ import annotations

import contextlib
from pathlib import Path

import streamlit as st

from engine import modelfiles
from engine.datasets import (
    BUILTIN_SETS,
    DatasetError,
    parse_csv,
    to_csv,
    upload_display_name,
    upload_file_name,
)
from engine.paths import PathNotAllowedError, check_allowed
from engine.rules import is_dynamic, page_rules, rule_named
from engine.store import DEFAULT_DB_PATH, StoreError
from engine.types import DEFAULT_DRAFT_TOKENS
from pages._charts import model_labels
from pages._display import md_escape, model_help, short_name
from pages._jobs import Job, job_panel, job_running, start_job
from pages._models import peek_n_layers
from pages._paths import (
    ALLOW_OTHER_FOLDERS,
    ENV_DB,
    EXAMPLE_MODEL_DIR,
    checked_source,
    default_db,
    default_model,
    resolve_db,
    uploads_dir,
)
from pages._queries import available_sets, clear_data, settings_scopes, stored_models
from pages._selection import (
    DEFAULT_PROMPT_SET,
    NEW_SETTINGS,
    OTHER_MODEL,
    SCOPE_STATE,
    Selection,
    default_draft_layers,
    selection,
)

DEFAULT_MODEL_NOTE = (
    "The default model is **SmolLM2-135M-Instruct**: tiny (135 M parameters, 30 layers), it ships with "
    "DepthScope and runs on a laptop CPU. It complies with most harmful requests even at full depth and "
    "degenerates into loops below about 27 of 30 layers, so it shows the machinery, not the phenomenon."
)
DEFAULT_MODEL_SHORT = (
    "Tiny default model: answers most harmful requests even at full depth and turns into loops below "
    "about 27 of 30 layers. Good for trying the tool; use a real chat model for findings."
)
REAL_MODEL_HOWTO = (
    "To study a real chat model, choose **Other model** and give a local Hugging Face checkpoint folder "
    "(config.json, tokenizer files, \\*.safetensors) or a .gguf file, for example "
    f"`{EXAMPLE_MODEL_DIR}`. {ALLOW_OTHER_FOLDERS} Supported: Llama, Mistral, Qwen2/3, Gemma/Gemma2, "
    "Phi-3, GPT-2, GPT-NeoX. A GPU is used automatically when there is one."
)
MODEL_LABELS = {
    OTHER_MODEL: "Other model: a checkpoint folder or .gguf file…",
    modelfiles.DEFAULT_MODEL: "SmolLM2-135M-Instruct (default, tiny)",
    modelfiles.DEMO_MODEL: "DepthScope demo model (synthetic)",
}


def sidebar() -> Selection:
    """Model, prompt set, database and generation settings: one place for every page."""
    with st.sidebar:
        top, settings, demo, jobs = st.container(), st.container(), st.container(), st.container()
    expander = settings.expander("Settings: database and generation")
    with expander:
        _db_input()
    db = str(resolve_db(st.session_state.get("db", default_db())))
    with top:
        _model_picker(db)
        _prompt_set_picker()
        stored = _scope_picker(db)
    with expander:
        _generation_inputs(stored)
        _exit_inputs()
    with demo:
        _demo_model_box()
    with jobs:
        job_panel("sidebar")
    return selection()


def _db_input() -> None:
    st.text_input(
        "Database file",
        value=default_db(),
        key="db",
        help=f"DuckDB file with every result (default {DEFAULT_DB_PATH}; env {ENV_DB} overrides). "
        "Created when missing; relative paths start at the project folder.",
    )


def _generation_inputs(stored: bool) -> None:
    """The decoding settings of new answers: the chosen stored scope's, or typed here ("other settings",
    or nothing stored yet for this model and set)."""
    if stored:
        st.caption(
            f"Generation settings: {md_escape(selection().scope.describe())}, as chosen under “Results "
            "for settings”. Choose “Other settings” there to type your own."
        )
        return
    st.number_input("Max new tokens", min_value=1, max_value=2048, value=64, step=8, key="max_new_tokens")
    st.toggle("Use the chat template", value=True, key="chat_template")
    st.text_area("System prompt (optional)", value="", key="system_prompt", height=68)
    st.caption("Completions are cached per model, prompt, depth and these settings.")


# ---------------------------------------------------------------- the generation-settings scope


def scope_options(db: str, model: str, prompt_set: str) -> tuple[list[str], dict[str, str]]:
    """The scopes with stored answers to the set (this model's first, the most answers first; then other
    models'), their labels in words, and "other settings" last."""
    info = next((i for i in reversed(stored_models(db)) if i.model_id == model), None)
    mine = settings_scopes(db, info.model_hash, (prompt_set,)) if info else []
    others = [s for s in settings_scopes(db, None, (prompt_set,)) if s.key not in {m.key for m in mine}]
    labels = {s.key: s.label() for s in mine} | {s.key: f"{s.label()}, other models" for s in others}
    return [*labels, NEW_SETTINGS], labels


def _scope_picker(db: str) -> bool:
    """Results for one generation-settings scope at a time; True when a stored scope is chosen."""
    sel = selection()
    try:
        options, labels = scope_options(db, sel.model, sel.prompt_set)
    except StoreError:  # the page shows the store error
        options, labels = [NEW_SETTINGS], {}
    if st.session_state.get(SCOPE_STATE) not in options:
        st.session_state.pop(SCOPE_STATE, None)
    if len(options) == 1:
        st.caption("Nothing stored yet for this model and prompt set: new answers use the settings below.")
        return False
    st.selectbox(
        "Results for settings",
        options,
        index=0,
        format_func=lambda key: labels.get(key, "Other settings (type them under Settings below)…"),
        key=SCOPE_STATE,
        help="Pages show the answers generated with one set of settings at a time (default: the settings "
        "with the most stored answers for this model and set); new answers use them too. Depth rules and "
        "exit thresholds vary inside them.",
    )
    return st.session_state.get(SCOPE_STATE) != NEW_SETTINGS


EXIT_HEAD_LABELS = {"raw": "raw: final norm + head", "tuned": "tuned lens, then the head"}


def _exit_inputs() -> None:
    """Early exit: the policy, its thresholds and minimum depth, and how a layer's state is read."""
    rules = page_rules()
    st.selectbox(
        "Exit policy",
        list(rules),
        format_func=lambda name: rules[name].menu_label,
        key="exit_policy",
        help=" ".join(f"{rule.menu_label.capitalize()}: {rule.help}." for rule in rules.values())
        + " Layers above a token's exit compute only its keys and values from the exited state (CALM's "
        "state propagation).",
    )
    if rule_named(st.session_state.get("exit_policy")).drafts:
        _draft_inputs()
    if is_dynamic(st.session_state.get("exit_policy")):
        st.text_input(
            "Thresholds",
            value="0.9",
            key="exit_thresholds",
            help="One or several, comma-separated (e.g. 0.5, 0.8, 0.95): a sweep runs each; the explorer "
            "generates each and lets you slide between them.",
        )
        st.number_input(
            "Min layers before any exit", min_value=1, max_value=512, value=1, step=1, key="exit_min_layers"
        )
        problem = selection().exit.problem
        if problem:
            st.error(md_escape(f"Early exit: {problem} Until then every token exits at the chosen depth."))
        st.radio(
            "Exit head",
            list(EXIT_HEAD_LABELS),
            format_func=EXIT_HEAD_LABELS.get,
            key="exit_head",
            horizontal=False,
            help="How an exiting token's state is read. Tuned: a trained affine map per layer before the "
            "head (a tuned lens); train one with `python -m engine lens train --model M`. Static truncation "
            "always reads the model's own final norm and head.",
        )


def _draft_inputs() -> None:
    """Self-speculative decoding: how many layers draft, and how many tokens per verification."""
    sel = selection()
    st.number_input(
        "Draft layers",
        min_value=1,
        max_value=4096,
        value=default_draft_layers(sel.model),
        step=1,
        key="exit_draft_layers",
        help="The first k layers (with the final norm and head) draft tokens; k must be below the model's "
        "layer count. Same as the CLI's --draft-layers.",
    )
    st.number_input(
        "Tokens drafted per check",
        min_value=1,
        max_value=64,
        value=DEFAULT_DRAFT_TOKENS,
        step=1,
        key="exit_draft_tokens",
        help="How many tokens the draft proposes before the full model verifies them (--draft-tokens).",
    )
    problem = selection().exit.problem
    if problem:
        st.error(
            md_escape(f"Self-speculative decoding: {problem}. Until then answers use static truncation.")
        )
    else:
        st.caption(
            "Answers are exactly the full model's (greedy): the Depth sweep page measures the compute this "
            "costs and how many drafted tokens the full model accepts."
        )


# ---------------------------------------------------------------- the model


def model_options(db: str) -> list[str]:
    names = [default_model(), *modelfiles.embedded_model_names()]
    with contextlib.suppress(StoreError):  # the page shows the store error
        names += [info.model_id for info in stored_models(db)]
    return [*modelfiles.one_per_model(names), OTHER_MODEL]


def model_label(name: str) -> str:
    return MODEL_LABELS.get(name) or short_name(name)


def model_option_labels(options: list[str]) -> dict[str, str]:
    """The model menu's texts: the embedded models and "Other model" in words, the others by their
    names for people, told apart when two share one."""
    names = model_labels(o for o in options if o not in MODEL_LABELS)
    return {o: MODEL_LABELS.get(o) or names[o] for o in options}


def _model_picker(db: str) -> None:
    options = model_options(db)
    if st.session_state.get("model_choice") not in options:
        st.session_state.pop("model_choice", None)
    labels = model_option_labels(options)
    chosen = st.session_state.get("model_choice", default_model())
    st.selectbox(
        "Model",
        options,
        index=options.index(default_model()),
        format_func=labels.get,
        key="model_choice",
        help=None if chosen == OTHER_MODEL else model_help(chosen),
    )
    if st.session_state["model_choice"] == OTHER_MODEL:
        _model_path_box()
    if selection().model == modelfiles.DEFAULT_MODEL:
        st.caption(DEFAULT_MODEL_SHORT)
    with st.expander("About the model, and using a real one"):
        st.markdown(DEFAULT_MODEL_NOTE)
        st.markdown(REAL_MODEL_HOWTO)


def _model_path_box() -> None:
    path = st.text_input(
        "Checkpoint folder, .gguf file or hub id", key="model_path", placeholder=EXAMPLE_MODEL_DIR
    )
    fallback = model_label(default_model())
    source, problem = checked_source(path, "model path")
    if not path.strip():
        st.caption(f"Type a path; until then {md_escape(fallback)} is used.")
    elif problem:
        st.error(md_escape(f"{problem} Until then {fallback} is used."))
    elif peek_n_layers(source) is None and (path.startswith(("/", "~", ".")) or "\\" in path):
        st.warning("No config.json or .gguf file found there yet.")


# ---------------------------------------------------------------- the prompt set


def set_title(name: str) -> str:
    info = BUILTIN_SETS.get(name)
    if info:
        return info.title
    if Path(name).parent == uploads_dir():  # an upload: the name it came with, not its stored name
        return f"CSV: {upload_display_name(name)}{_upload_number(Path(name))}"
    return f"CSV: {Path(name).name}"


def _upload_number(path: Path) -> str:
    """ " (upload 2 of 3)" when several different files were uploaded under one name (oldest first)."""
    shown = upload_display_name(path.name)
    with contextlib.suppress(OSError):
        same = [p for p in path.parent.glob("*.csv") if upload_display_name(p.name) == shown]
        if len(same) > 1 and path in same:
            same.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
            return f" (upload {same.index(path) + 1} of {len(same)})"
    return ""


def _prompt_set_picker() -> None:
    options = [*available_sets(), *st.session_state.get("uploaded_sets", [])]
    current = st.session_state.get("prompt_set")
    if current and current not in options:
        options.append(current)
    st.selectbox(
        "Prompt set",
        options,
        index=options.index(DEFAULT_PROMPT_SET),
        format_func=set_title,
        key="prompt_set",
    )
    if info := BUILTIN_SETS.get(st.session_state.get("prompt_set", DEFAULT_PROMPT_SET)):
        st.caption(f"{info.description} Source: {info.source}. Licence: {info.licence}.")
    with st.expander("Use your own prompts (CSV)"):
        st.file_uploader(
            "Upload a prompt CSV",
            type=["csv", "tsv", "txt"],
            key="upload",
            on_change=_on_upload,
            help="Columns: prompt (+ optional label harmful/benign, id, category), or HarmBench, "
            "StrongREJECT or AdvBench files as they are.",
        )
        if st.session_state.get("upload_error"):
            st.error(md_escape(st.session_state["upload_error"]))


def upload_target(filename: str, prompts: list) -> Path:
    """Where an uploaded CSV is saved: data/uploads/<its name, reduced to safe characters>-<content>.csv,
    never next to the database (whose folder may be one the dashboard refused) nor where the name points;
    another file under the same name gets another path, so no upload overwrites another."""
    return check_allowed(uploads_dir() / upload_file_name(filename, prompts), "upload folder")


def _on_upload() -> None:
    upload = st.session_state.get("upload")
    st.session_state["upload_error"] = ""
    if upload is None:
        return
    try:
        prompts = parse_csv(upload.getvalue(), filename=upload.name)
        path = upload_target(upload.name, prompts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_csv(prompts), encoding="utf-8")
    except (DatasetError, OSError, PathNotAllowedError) as exc:
        st.session_state["upload_error"] = str(exc)
        return
    uploaded = st.session_state.setdefault("uploaded_sets", [])
    if str(path) not in uploaded:
        uploaded.append(str(path))
    st.session_state["prompt_set"] = str(path)
    clear_data()


# ---------------------------------------------------------------- the demo model


def _demo_model_box() -> None:
    if modelfiles.demo_model_built() or job_running("demo-model"):
        return
    with st.expander("Demo model: not built yet"):
        st.caption(
            "A small synthetic chat model trained here, offline (a few minutes on CPU), whose refusal "
            "lives in its last two layers: truncate it and it complies with placeholder answers. "
            "It shows what DepthScope finds when the phenomenon is really there."
        )
        if st.button("Build demo model", key="build-demo"):
            start_demo_build()


def start_demo_build() -> None:
    def work(job: Job) -> str:
        from engine.demo_model import build_demo_model  # torch: only inside the job

        path = build_demo_model(progress=job.update)
        return f"Saved to {path}; pick “{MODEL_LABELS[modelfiles.DEMO_MODEL]}” as the model."

    start_job("demo-model", "Building the demo model", work, stoppable=False)
