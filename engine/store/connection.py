"""Opening a DuckDB file safely, cross-process and in-process locking, cursors and transactions.

DuckDB lets one process open a file read-write, or several open it read-only, never both at once
(https://duckdb.org/docs/connect/concurrency). So by default a store opens the file only for each
call (read-only to read, read-write for one write transaction) and closes it again: a sweep writing
in one process and the dashboard or ``report`` reading in others take turns, each retrying a busy
file briefly with backoff. A conflict that outlasts the timeout becomes :class:`StoreLockedError`.
Inside a process one store may be shared by threads: every call runs on its own cursor and writes
are serialised by a per-file lock.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeVar

import duckdb

from engine.fileerrors import file_error_message
from engine.store.errors import (
    NotAStoreError,
    ReadOnlyStoreError,
    StoreClosedError,
    StoreError,
    StoreLockedError,
)

_DUCKDB_MAGIC = b"DUCK"  # bytes 8..12 of every DuckDB database file
_DUCKDB_MAGIC_OFFSET = 8
# What DuckDB says when a file is not a database, fails its checksums, or is cut short.
_CORRUPTION_SIGNS = ("not a valid DuckDB database", "Corrupt database file", "Could not read enough bytes")

# DuckDB shares one database instance per file inside a process, so two stores on the
# same file must share one write lock too.
_PATH_LOCKS: dict[str, threading.RLock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


def utc_now() -> datetime:
    """Timestamps in the store are naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def _write_lock_for(path: Path) -> threading.RLock:
    with _PATH_LOCKS_GUARD:
        return _PATH_LOCKS.setdefault(str(path.resolve()), threading.RLock())


def _refuse_non_duckdb_file(path: Path) -> None:
    """Check the header ourselves so DuckDB never gets a chance to touch a foreign file."""
    if not path.exists():
        return
    if path.is_dir():
        raise NotAStoreError(f"{path} is a directory, not a DuckDB database file")
    with path.open("rb") as handle:
        header = handle.read(_DUCKDB_MAGIC_OFFSET + len(_DUCKDB_MAGIC))
    if header[_DUCKDB_MAGIC_OFFSET:] != _DUCKDB_MAGIC:
        raise NotAStoreError(
            f"{path} is not a DuckDB database (empty, corrupt or another format); it was left untouched. "
            "Move it away or pass another --db."
        )


def _lock_message(path: Path, duckdb_message: str, read_only: bool) -> tuple[str, int | None]:
    match = re.search(r"\(PID (\d+)\)", duckdb_message)
    pid = int(match.group(1)) if match and int(match.group(1)) > 0 else None
    holder = f"pid {pid}" if pid else "pid unknown"
    if "read-only mode" in duckdb_message and not read_only:
        advice = "it is open read-only there, so you can open it read-only too, or use another --db"
    else:
        advice = "close it or use another --db (read-only access also waits until the writer closes)"
    return f"database {path} is in use by another DepthScope process ({holder}) — {advice}", pid


def _is_lock_conflict(message: str) -> bool:
    return "Could not set lock" in message or "Conflicting lock" in message


def _is_mode_conflict(message: str) -> bool:
    """This process has the file open in the other mode (read-only vs read-write) right now."""
    return "different configuration" in message


def _is_closing_race(message: str) -> bool:
    """Another thread of this process is closing the file's last connection just as we open it."""
    return "is already attached by database" in message


def _connect(path: Path, read_only: bool, lock_timeout_s: float) -> duckdb.DuckDBPyConnection:
    """Open ``path``, retrying a busy file with backoff for up to ``lock_timeout_s`` seconds.

    Busy means another process holds it in a conflicting mode, or (inside this process) another
    thread has it open in the other mode; both last only one short transaction in the normal workflow.
    """
    deadline = time.monotonic() + lock_timeout_s
    pause = 0.02
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as error:
            message = str(error)
            busy = _is_lock_conflict(message) or _is_mode_conflict(message) or _is_closing_race(message)
            if busy and time.monotonic() < deadline:
                time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
                pause = min(pause * 2, 0.25)
                continue
            if _is_lock_conflict(message):
                text, pid = _lock_message(path, message, read_only)
                raise StoreLockedError(text, path, pid) from error
            if any(sign in message for sign in _CORRUPTION_SIGNS):
                raise NotAStoreError(
                    f"{path} is not a valid DuckDB database or is damaged ({message}); it was left untouched"
                ) from error
            if _is_mode_conflict(message):
                raise StoreError(
                    f"database {path} is already open in this process in the other mode "
                    f"(read-only vs read-write); reuse that Store instead of opening a second one"
                ) from error
            raise StoreError(f"cannot open database {path}: {message}") from error


def connect_checked(path: Path, read_only: bool, lock_timeout_s: float) -> duckdb.DuckDBPyConnection:
    """A connection to ``path``, refusing foreign files and missing read-only files first."""
    try:
        _refuse_non_duckdb_file(path)
        if read_only and not path.exists():
            raise StoreError(f"database {path} does not exist; run a sweep first or pass another --db")
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(file_error_message(error, f"open database {path}")) from error
    return _connect(path, read_only, lock_timeout_s)


_F = TypeVar("_F", bound=Callable[..., Any])


def translated(action: str) -> Callable[[_F], _F]:
    """Turn DuckDB's exceptions into StoreError, naming what we were doing and on which file."""

    def decorate(method: _F) -> _F:
        @functools.wraps(method)
        def wrapper(self: StoreConnection, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except StoreError:
                raise
            except duckdb.InterruptException as error:
                # A signal (Ctrl-C, or SIGTERM turned into an interrupt) landed inside DuckDB: it is the
                # user stopping the run, not a database fault; the transaction was rolled back.
                raise KeyboardInterrupt(f"{action} interrupted on {self.path}") from error
            except duckdb.Error as error:
                raise StoreError(f"{action} failed on {self.path}: {error}") from error

        return wrapper  # type: ignore[return-value]

    return decorate


class StoreConnection:
    """One DuckDB file: per-call cursors, serialised write transactions, close.

    A store either keeps one connection for its whole life (``held``: fastest, but no other process
    can write the file meanwhile, nor read it while it is open read-write), or opens the file for each
    call and closes it right after (the default of :meth:`Store.open`): reads open it read-only, each
    write transaction read-write, so a sweep in one process and readers in others take turns, each
    waiting up to ``lock_timeout_s`` for the other's short transaction.
    """

    def __init__(
        self,
        path: Path,
        read_only: bool,
        *,
        held: duckdb.DuckDBPyConnection | None = None,
        lock_timeout_s: float = 0.0,
    ) -> None:
        self._held = held
        self._closed = False
        self._local = threading.local()  # the connection this thread has open now (nested calls reuse it)
        self.path = path
        self.read_only = read_only
        self.lock_timeout_s = lock_timeout_s
        self._write_lock = _write_lock_for(path)
        self.schema_version = 0

    def close(self) -> None:
        with self._write_lock:
            self._closed = True
            if self._held is not None:
                self._held.close()
                self._held = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"Store({str(self.path)!r}, {mode}, schema v{self.schema_version})"

    @contextmanager
    def _connection(self, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """The held connection, this thread's open one, or a fresh one closed again on leaving."""
        if self._closed:
            raise StoreClosedError(f"store {self.path} is closed")
        if self._held is not None:
            yield self._held
            return
        current: tuple[duckdb.DuckDBPyConnection, bool] | None = getattr(self._local, "open", None)
        if current is not None and (current[1] or not write):
            yield current[0]
            return
        con = connect_checked(self.path, read_only=not write, lock_timeout_s=self.lock_timeout_s)
        self._local.open = (con, write)
        try:
            yield con
        finally:
            self._local.open = current
            con.close()

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A private cursor per call: DuckDB connections must not be shared across threads."""
        with self._connection(write=False) as con:
            cursor = con.cursor()
            try:
                yield cursor
            finally:
                cursor.close()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One serialised write transaction: committed whole or rolled back whole."""
        if self.read_only:
            raise ReadOnlyStoreError(f"store {self.path} was opened read-only; open it read-write to save")
        with self._write_lock, self._connection(write=True) as con:
            cursor = con.cursor()
            try:
                cursor.begin()
                try:
                    yield cursor
                except BaseException:
                    cursor.rollback()
                    raise
                cursor.commit()
            finally:
                cursor.close()
