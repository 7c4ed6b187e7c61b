"""Heavy work, one job at a time: in the foreground on a button (:func:`run_now`), or in a background
thread (:class:`JobBoard`) whose progress survives page changes and shows in every tab.

The worker side (:class:`Job`, :class:`JobBoard`) never calls Streamlit: a thread has no page to draw
on. The functions below it are the Streamlit side that starts jobs and polls them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import streamlit as st

from pages._display import error_sentence, md_escape, show_error
from pages._models import ModelHub, model_hub
from pages._queries import clear_data

log = logging.getLogger("depthscope.app")

POLL_SECONDS = 1.0
T = TypeVar("T")


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
        """Start ``work(job)`` in a thread; None when the model is busy with other work."""
        if not self.hub.busy.acquire(blocking=False):
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
            job.state, job.outcome = "failed", error_sentence(exc)
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


def busy_message() -> str:
    job = job_board().current
    if job is not None and job.running:
        return f"The model is busy with “{job.title}” (progress in the sidebar). Try again when it is done."
    return "The model is busy with a request from another tab. Try again in a moment."


def run_now(label: str, work: Callable[[], T]) -> T | None:
    """Heavy work in the foreground (on a button), one at a time, errors shown as messages."""
    hub = model_hub()
    if not hub.busy.acquire(blocking=False):
        st.warning(md_escape(busy_message()))
        return None
    try:
        with st.spinner(md_escape(label), show_time=True):
            return work()
    except Exception as exc:  # engine errors of every kind become a message
        show_error(exc)
        return None
    finally:
        hub.busy.release()


def start_job(kind: str, title: str, work: Callable[[Job], str], *, stoppable: bool = True) -> None:
    """Start a background job and rerun so the progress panel starts polling."""
    if job_board().start(kind, title, work, stoppable=stoppable) is None:
        st.warning(md_escape(busy_message()))
        return
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


_SHOW_BY_STATE = {"done": st.success, "stopped": st.warning, "failed": st.error}
_VERB_BY_STATE = {"done": "finished", "stopped": "stopped", "failed": "failed"}


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
    _SHOW_BY_STATE[job.state](md_escape(f"{job.title} {_VERB_BY_STATE[job.state]}. {job.outcome}".strip()))
    if st.button("Dismiss", key=f"dismiss-{where}"):
        st.session_state["dismissed_job"] = job.job_id
        st.rerun(scope="app")
