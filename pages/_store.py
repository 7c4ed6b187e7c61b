"""The store handles of the dashboard: one cached Store per database file, and one per background job.

Neither keeps the file open: a Store opens it for each call (read-only to read, read-write for one
write transaction) and closes it again, so a CLI sweep can write the same file while the dashboard is
open, and the dashboard reads the sweep's rows as they arrive. Both sides retry a busy file briefly.
"""

from __future__ import annotations

import atexit
import tempfile
from pathlib import Path

import streamlit as st

from engine.store import Store, StoreError, StoreLockedError
from pages._display import show_error
from pages._paths import allowed_db


def _close_store(store: Store) -> None:
    store.close()


# A page waits this long for a writer's batch; a background job's batch waits longer for readers.
READ_LOCK_TIMEOUT_S = 5.0
JOB_LOCK_TIMEOUT_S = 60.0


@st.cache_resource(max_entries=4, show_spinner=False, on_release=_close_store)
def open_store(db: str) -> Store:
    """Read-write when possible (it migrates the file once); read-only when another program keeps
    the file open read-only. The handle holds no file open between calls."""
    allowed_db(db)
    try:
        return Store.open(db, lock_timeout_s=READ_LOCK_TIMEOUT_S)
    except StoreLockedError:
        return Store.open(db, read_only=True, lock_timeout_s=READ_LOCK_TIMEOUT_S)


atexit.register(open_store.clear)  # close the databases when the server stops


def get_store(db: str) -> Store | None:
    """The store of this database, or None after showing why it cannot be opened."""
    try:
        return open_store(db)
    except StoreError as exc:
        show_error(exc)
        st.info("Pick another database file in the sidebar (Settings), or close the program using it.")
        return None


def open_job_store(db: str) -> Store:
    """A background job's own connection to the database; use it in a ``with`` block."""
    allowed_db(db)
    return Store.open(db, lock_timeout_s=JOB_LOCK_TIMEOUT_S)


def export_bytes(db: str, fmt: str) -> bytes:
    """The raw results (every generation with its verdicts) as CSV or Parquet bytes, via store.export.
    The scratch file lives next to the database (an allowed folder) and is gone when this returns."""
    with tempfile.TemporaryDirectory(dir=Path(db).parent, prefix=".depthscope-export-") as folder:
        return open_store(db).export(Path(folder) / f"results.{fmt}").read_bytes()
