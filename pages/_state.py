"""The one module pages get engine handles from, and the sidebar every page shares.

* ``get_store()``: the DuckDB store (``st.cache_resource``, one per database file).
* ``model_hub()``: loaded models (``st.cache_resource``) and the ``busy`` lock that lets one heavy job
  (a generation, a sweep, a probe run...) use the model at a time, whichever browser tab asks.
* ``job_board()``: background jobs (sweeps, HarmBench judging, probes, the demo-model build) that run in
  a thread with their own store connection, so their progress survives page changes.
* Cached queries (``st.cache_data``, keyed by the database path); ``clear_data()`` after every write.
* ``sidebar()``: model, prompt set, database and generation settings, rendered by app.py on every page.

Never imports torch: engine modules that need it are imported inside the functions that run a model.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import streamlit as st

from engine import queries, report
from engine.datasets import (
    BUILTIN_SETS,
    DatasetError,
    load_prompt_set,
    parse_csv,
    prompt_set_available,
    to_csv,
)
from engine.paths import REPO_ROOT, PathNotAllowedError, check_allowed, looks_like_path
from engine.store import DEFAULT_DB_PATH, Store, StoreError, StoreLockedError
from engine.types import Completion, GenerationParams, ModelInfo, Prompt, Verdict
from pages import _charts

log = logging.getLogger("depthscope.app")

ENV_DB = "DEPTHSCOPE_DB"
ENV_MODEL = "DEPTHSCOPE_MODEL"
ENV_ACTIVATIONS = "DEPTHSCOPE_ACTIVATIONS"
OTHER_MODEL = "__other__"
MAX_LOADED_MODELS = 2
POLL_SECONDS = 1.0
T = TypeVar("T")

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
    "`/models/Llama-2-7b-chat-hf`. Supported: Llama, Mistral, Qwen2/3, Gemma/Gemma2, Phi-3, GPT-2, "
    "GPT-NeoX. A GPU is used automatically when there is one."
)


# ---------------------------------------------------------------- small display helpers

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~$:])")


def md_escape(text: str) -> str:
    """Escape user-given names (paths, model ids) before they go into our own markdown."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", str(text))


def page_header(title: str, explanation: str) -> None:
    st.title(title)
    st.caption(explanation)


def show_error(exc: BaseException) -> None:
    """An engine error as a message, never a traceback (the server log keeps the details). Messages
    may quote CSV cells or paths, so they are escaped: nothing in them is read as markdown."""
    log.info("engine error shown to the user", exc_info=exc)
    st.error(md_escape(str(exc) or type(exc).__name__), icon=":material/error:")


def short_name(model: str, width: int = 42) -> str:
    """A model id for labels: embedded names spelled out, a path by its last folder."""
    return _charts.short(model, width)


# ---------------------------------------------------------------- where things are


def default_db() -> str:
    return os.environ.get(ENV_DB) or str(DEFAULT_DB_PATH)


def default_model() -> str:
    return os.environ.get(ENV_MODEL) or queries.DEFAULT_MODEL


def resolve_db(text: str) -> Path:
    path = Path(text.strip() or default_db()).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def activations_dir() -> Path:
    from engine.probes import ACTIVATIONS_DIR

    return Path(os.environ.get(ENV_ACTIVATIONS) or ACTIVATIONS_DIR)


@dataclass(frozen=True)
class Selection:
    """What the sidebar picked: shared by every page."""

    model: str
    prompt_set: str
    db: str  # resolved path, as a string (a cache key)
    params: GenerationParams


def selection() -> Selection:
    """The current sidebar choices (app.py renders the sidebar before the page)."""
    state = st.session_state
    model = state.get("model_choice", default_model())
    if model == OTHER_MODEL:
        model = (state.get("model_path") or "").strip()
        model = model if model and path_problem(model, "model path") is None else default_model()
    return Selection(
        model=model,
        prompt_set=state.get("prompt_set", "demo"),
        db=str(resolve_db(state.get("db", default_db()))),
        params=GenerationParams(
            max_new_tokens=int(state.get("max_new_tokens", GenerationParams.max_new_tokens)),
            chat_template=bool(state.get("chat_template", True)),
            system_prompt=(state.get("system_prompt") or "").strip() or None,
        ),
    )


# ---------------------------------------------------------------- the store


def _close_store(store: Store) -> None:
    store.close()


@st.cache_resource(max_entries=4, show_spinner=False, on_release=_close_store)
def open_store(db: str) -> Store:
    """Read-write when possible; read-only while another process (a CLI sweep) holds the file."""
    allowed_db(db)
    try:
        return Store.open(db, lock_timeout_s=1.0)
    except StoreLockedError:
        return Store.open(db, read_only=True, lock_timeout_s=1.0)


atexit.register(open_store.clear)  # close the databases when the server stops


def path_problem(text: str, what: str) -> str | None:
    """Why a path typed in a page may not be opened (outside data/ and the allow-list), else None."""
    if not looks_like_path(text):
        return None  # a hub id or a name, not a file of this machine
    try:
        check_allowed(text, what)
    except PathNotAllowedError as exc:
        return str(exc)
    return None


def get_store(db: str | None = None) -> Store | None:
    """The store of the selected database, or None after showing why it cannot be opened."""
    db = db or selection().db
    try:
        return open_store(db)
    except StoreError as exc:
        show_error(exc)
        st.info("Pick another database file in the sidebar (Settings), or close the program using it.")
        return None


def open_job_store(db: str) -> Store:
    """A background job's own connection to the database; use it in a ``with`` block."""
    allowed_db(db)
    return Store.open(db, lock_timeout_s=5.0)


def allowed_db(db: str) -> None:
    """Every way the pages open a database passes here: only data/ and the allow-list."""
    try:
        check_allowed(db, "database file")
    except PathNotAllowedError as exc:
        raise StoreError(str(exc)) from None


# ---------------------------------------------------------------- models and heavy work


class ModelHub:
    """Loaded models by name (at most ``capacity``), and the lock for heavy work on them."""

    def __init__(self, capacity: int = MAX_LOADED_MODELS) -> None:
        self.capacity = capacity
        self.busy = threading.Lock()  # held by whoever runs a model: one job at a time
        self._guard = threading.Lock()
        self._models: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        with self._guard:
            return self._models.get(name)

    def load(self, name: str) -> Any:
        """The loaded model (engine.models.LoadedModel), loading it on first use (torch imported here)."""
        with self._guard:
            if name in self._models:
                self._models[name] = self._models.pop(name)  # most recently used last
                return self._models[name]
        from engine.models import load_model

        loaded = load_model(name)
        with self._guard:
            self._models[name] = loaded
            while len(self._models) > self.capacity:
                self._models.pop(next(iter(self._models)))
        return loaded


@st.cache_resource(show_spinner=False)
def model_hub() -> ModelHub:
    return ModelHub()


def model_info(sel: Selection, store: Store | None) -> ModelInfo | None:
    """What we know about the selected model without loading it: loaded, else stored, else None."""
    loaded = model_hub().get(sel.model)
    if loaded is not None:
        return loaded.info
    return None if store is None else queries.known_model(store, sel.model)


@st.cache_data(show_spinner=False, max_entries=32)
def peek_n_layers(model: str) -> int | None:
    return queries.peek_n_layers(model)


def busy_message() -> str:
    job = job_board().current
    if job is not None and job.running:
        return f"The model is busy with “{job.title}” (progress in the sidebar). Try again when it is done."
    return "The model is busy with a request from another tab. Try again in a moment."


def run_now(label: str, work: Callable[[], T]) -> T | None:
    """Heavy work in the foreground (on a button), one at a time, errors shown as messages."""
    hub = model_hub()
    if not hub.busy.acquire(blocking=False):
        st.warning(busy_message())
        return None
    try:
        with st.spinner(label, show_time=True):
            return work()
    except Exception as exc:  # engine errors of every kind become a message
        show_error(exc)
        return None
    finally:
        hub.busy.release()


# ---------------------------------------------------------------- background jobs


@dataclass
class Job:
    """One background job; its fields are written by the worker thread and read by the pages."""

    kind: str
    title: str
    stoppable: bool
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    stop: threading.Event = field(default_factory=threading.Event)
    fraction: float = 0.0
    message: str = "starting…"
    state: str = "running"  # running | done | stopped | failed
    outcome: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    def update(self, fraction: float, message: str) -> None:
        self.fraction = min(max(float(fraction), 0.0), 1.0)
        self.message = message


class JobBoard:
    """The current background job (one at a time: it holds the model hub's busy lock)."""

    def __init__(self, hub: ModelHub) -> None:
        self.hub = hub
        self.current: Job | None = None

    def start(
        self, kind: str, title: str, work: Callable[[Job], str], *, stoppable: bool = True
    ) -> Job | None:
        """Start ``work(job)`` in a thread; None (after a warning) when the model is busy."""
        if not self.hub.busy.acquire(blocking=False):
            st.warning(busy_message())
            return None
        job = Job(kind, title, stoppable)
        self.current = job
        threading.Thread(target=self._run, args=(job, work), name=f"depthscope-{kind}", daemon=True).start()
        return job

    def _run(self, job: Job, work: Callable[[Job], str]) -> None:
        try:
            job.outcome = work(job) or ""
            job.state = "stopped" if job.stop.is_set() else "done"
            if job.state == "done":
                job.fraction = 1.0
        except BaseException as exc:  # the thread must always report and release the lock
            log.exception("background job %s failed", job.title)
            job.state, job.outcome = "failed", str(exc) or type(exc).__name__
        finally:
            job.finished = time.time()
            self.hub.busy.release()

    def wait(self, timeout: float) -> bool:
        """Block until the current job ends (tests); True when it did within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.current is not None and self.current.running and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.current is None or not self.current.running


@st.cache_resource(show_spinner=False)
def job_board() -> JobBoard:
    return JobBoard(model_hub())


def start_job(kind: str, title: str, work: Callable[[Job], str], *, stoppable: bool = True) -> None:
    """Start a background job and rerun so the progress panel starts polling."""
    if job_board().start(kind, title, work, stoppable=stoppable) is not None:
        st.rerun()


def job_running(kind: str | None = None) -> bool:
    job = job_board().current
    return job is not None and job.running and (kind is None or job.kind == kind)


def job_panel(where: str) -> None:
    """Progress of the background job, polled every second while it runs (any page, any tab)."""
    job = job_board().current
    if job is None or st.session_state.get("dismissed_job") == job.job_id:
        return
    st.fragment(run_every=POLL_SECONDS if job.running else None, key=f"jobs-{where}")(_job_body)(where)


def _job_body(where: str) -> None:
    job = job_board().current
    if job is None:
        return
    if job.running:
        elapsed = time.time() - job.started
        st.progress(job.fraction, text=md_escape(f"{job.title}: {job.message} ({elapsed:.0f} s)"))
        if job.stoppable:
            label = "Stopping…" if job.stop.is_set() else "Stop"
            st.button(label, key=f"stop-{where}", on_click=job.stop.set, disabled=job.stop.is_set())
        return
    if st.session_state.get("seen_job") != job.job_id:  # first look after it ended: refresh every page
        st.session_state["seen_job"] = job.job_id
        clear_data()
        st.rerun(scope="app")
    show = {"done": st.success, "stopped": st.warning, "failed": st.error}[job.state]
    verb = {"done": "finished", "stopped": "stopped", "failed": "failed"}[job.state]
    show(md_escape(f"{job.title} {verb}. {job.outcome}".strip()))
    if st.button("Dismiss", key=f"dismiss-{where}"):
        st.session_state["dismissed_job"] = job.job_id
        st.rerun(scope="app")


# ---------------------------------------------------------------- cached queries (clear after writes)


def clear_data() -> None:
    st.cache_data.clear()


@st.cache_data(show_spinner=False, max_entries=32)
def prompts_of(prompt_set: str) -> list[Prompt]:
    return load_prompt_set(prompt_set)


@st.cache_data(show_spinner=False, max_entries=16)
def asr_rows(db: str, judge: str | None = None) -> list[report.AsrRow]:
    return report.asr_rows(open_store(db), judge)


@dataclass(frozen=True)
class Answers:
    """One prompt's stored completions by depth, and every judge's verdict on them."""

    completions: dict[int, Completion]
    verdicts: dict[str, dict[str, Verdict]]  # completion key -> judge -> verdict

    def verdicts_at(self, layers: int) -> dict[str, Verdict]:
        completion = self.completions.get(layers)
        return self.verdicts.get(completion.key, {}) if completion else {}


@st.cache_data(show_spinner=False, max_entries=256)
def answers(db: str, model_hash: str, prompt: Prompt, layers: tuple[int, ...], params_hash: str) -> Answers:
    """Stored answers to one prompt; the keyword verdict is computed on the fly where none is stored."""
    store = open_store(db)
    completions = queries.stored_completions(store, model_hash, prompt, layers, params_hash)
    verdicts = queries.latest_verdicts(store, [c.key for c in completions.values()])
    for key, verdict in queries.keyword_verdicts(prompt, completions.values()).items():
        verdicts.setdefault(key, {}).setdefault("keyword", verdict)
    return Answers(completions, verdicts)


@st.cache_data(show_spinner=False, max_entries=16)
def stored_models(db: str) -> list[ModelInfo]:
    return open_store(db).list_models()


@st.cache_data(show_spinner=False, max_entries=16)
def judges_in_store(db: str) -> list[str]:
    return queries.judges_in_store(open_store(db))


@st.cache_data(show_spinner=False, max_entries=16)
def agreement_rows(db: str, judge_a: str, judge_b: str) -> list[report.AgreementRow]:
    return report.agreement_rows(open_store(db), judge_a, judge_b)


@st.cache_data(show_spinner=False, max_entries=16)
def disagreements(db: str, judge_a: str, judge_b: str) -> pd.DataFrame:
    return report.disagreements(open_store(db), judge_a, judge_b)


@st.cache_data(show_spinner=False, max_entries=16)
def probe_table(db: str, model_hash: str, set_id: str) -> pd.DataFrame:
    return queries.probe_table(open_store(db).get_probe_results(model_hash=model_hash, set_id=set_id))


@st.cache_data(show_spinner=False, max_entries=16)
def stored_layers(db: str, model_hash: str) -> list[int]:
    return queries.stored_layers(open_store(db), model_hash)


@st.cache_data(show_spinner=False, max_entries=16)
def table_counts(db: str) -> dict[str, int]:
    return open_store(db).table_counts()


def model_names(db: str) -> dict[str, str]:
    """model_hash -> a short display name, for tables keyed by hash."""
    return {info.model_hash: short_name(info.model_id) for info in stored_models(db)}


# ---------------------------------------------------------------- the frame: page config + sidebar

_FRAME = threading.local()  # .drawn: app.py drew the frame in this script run


def page_config() -> None:
    st.set_page_config(page_title="DepthScope", page_icon=":material/layers:", layout="wide")


def run_page(page: st.Page) -> None:
    """app.py: draw the shared frame once, then the chosen page."""
    page_config()
    sidebar()
    _FRAME.drawn = True
    try:
        page.run()
    finally:
        _FRAME.drawn = False


def ensure_frame() -> None:
    """Pages call this first: when app.py did not run (see below), send the run through it again."""
    if getattr(_FRAME, "drawn", False):
        return
    _leave_multipage_v1()
    page_config()
    sidebar()


def _leave_multipage_v1() -> None:
    """Streamlit 1.67 keeps a legacy mode for apps with a pages/ folder: until some run has called
    st.navigation, a run asks PagesManager whether to execute pages/<url>.py alone, without app.py. A
    server whose first visitor opens /report directly would stay in that mode (old-style page list, no
    shared sidebar) until someone opens /. Ending the mode and rerunning sends this run through app.py."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a future Streamlit without the legacy mode
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


def sidebar() -> Selection:
    """Model, prompt set, database and generation settings: one place for every page."""
    with st.sidebar:
        top, settings, demo, jobs = st.container(), st.container(), st.container(), st.container()
    with settings.expander("Settings: database and generation"):
        _settings_inputs()
    db = str(resolve_db(st.session_state.get("db", default_db())))
    with top:
        _model_picker(db)
        _prompt_set_picker(db)
    with demo:
        _demo_model_box()
    with jobs:
        job_panel("sidebar")
    return selection()


def _settings_inputs() -> None:
    st.text_input(
        "Database file",
        value=default_db(),
        key="db",
        help=f"DuckDB file with every result (default {DEFAULT_DB_PATH}; env {ENV_DB} overrides). "
        "Created when missing; relative paths start at the project folder.",
    )
    st.number_input("Max new tokens", min_value=1, max_value=2048, value=64, step=8, key="max_new_tokens")
    st.toggle("Use the chat template", value=True, key="chat_template")
    st.text_area("System prompt (optional)", value="", key="system_prompt", height=68)
    st.caption("Completions are cached per model, prompt, depth and these settings.")


def model_options(db: str) -> list[str]:
    names = [default_model(), *queries.embedded_model_names()]
    with contextlib.suppress(StoreError):  # the page shows the store error
        names += [info.model_id for info in stored_models(db)]
    return [*dict.fromkeys(names), OTHER_MODEL]


def model_label(name: str) -> str:
    if name == OTHER_MODEL:
        return "Other model: a checkpoint folder or .gguf file…"
    if name == queries.DEFAULT_MODEL:
        return "SmolLM2-135M-Instruct (default, tiny)"
    if name == queries.DEMO_MODEL:
        return "DepthScope demo model (synthetic)"
    return short_name(name)


def _model_picker(db: str) -> None:
    options = model_options(db)
    if st.session_state.get("model_choice") not in options:
        st.session_state.pop("model_choice", None)
    st.selectbox(
        "Model", options, index=options.index(default_model()), format_func=model_label, key="model_choice"
    )
    if st.session_state["model_choice"] == OTHER_MODEL:
        path = st.text_input(
            "Checkpoint folder, .gguf file or hub id",
            key="model_path",
            placeholder="/models/Llama-2-7b-chat-hf",
        )
        if not path.strip():
            st.caption(f"Type a path; until then {model_label(default_model())} is used.")
        elif problem := path_problem(path, "model path"):
            st.error(f"{problem} Until then {model_label(default_model())} is used.")
        elif queries.peek_n_layers(path) is None and (path.startswith(("/", "~", ".")) or "\\" in path):
            st.warning("No config.json or .gguf file found there yet.")
    if selection().model == queries.DEFAULT_MODEL:
        st.caption(DEFAULT_MODEL_SHORT)
    with st.expander("About the model, and using a real one"):
        st.markdown(DEFAULT_MODEL_NOTE)
        st.markdown(REAL_MODEL_HOWTO)


def set_title(name: str) -> str:
    info = BUILTIN_SETS.get(name)
    return info.title if info else f"CSV: {Path(name).name}"


@st.cache_data(show_spinner=False)
def _available_sets() -> list[str]:
    return [name for name in BUILTIN_SETS if prompt_set_available(name)]


def _prompt_set_picker(db: str) -> None:
    options = [*_available_sets(), *st.session_state.get("uploaded_sets", [])]
    current = st.session_state.get("prompt_set")
    if current and current not in options:
        options.append(current)
    st.selectbox("Prompt set", options, index=options.index("demo"), format_func=set_title, key="prompt_set")
    if info := BUILTIN_SETS.get(st.session_state.get("prompt_set", "demo")):
        st.caption(f"{info.description} Source: {info.source}. Licence: {info.licence}.")
    with st.expander("Use your own prompts (CSV)"):
        st.file_uploader(
            "Upload a prompt CSV",
            type=["csv", "tsv", "txt"],
            key="upload",
            on_change=_on_upload,
            args=(db,),
            help="Columns: prompt (+ optional label harmful/benign, id, category), or HarmBench, "
            "StrongREJECT or AdvBench files as they are.",
        )
        if st.session_state.get("upload_error"):
            st.error(md_escape(st.session_state["upload_error"]))


def _on_upload(db: str) -> None:
    upload = st.session_state.get("upload")
    st.session_state["upload_error"] = ""
    if upload is None:
        return
    try:
        prompts = parse_csv(upload.getvalue(), filename=upload.name)
        folder = Path(db).parent / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{Path(upload.name).stem}.csv"
        path.write_text(to_csv(prompts), encoding="utf-8")
    except (DatasetError, OSError) as exc:
        st.session_state["upload_error"] = str(exc)
        return
    uploaded = st.session_state.setdefault("uploaded_sets", [])
    if str(path) not in uploaded:
        uploaded.append(str(path))
    st.session_state["prompt_set"] = str(path)
    clear_data()


def _demo_model_box() -> None:
    if queries.demo_model_built() or job_running("demo-model"):
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
    try:
        from engine.demo_model import build_demo_model
    except ImportError:
        st.info("The demo-model builder (engine/demo_model.py) is not available yet.")
        return

    def work(job: Job) -> str:
        path = build_demo_model(progress=job.update)
        return f"Saved to {path}; pick “DepthScope demo model” as the model."

    start_job("demo-model", "Building the demo model", work, stoppable=False)
