"""The :class:`Store`: one DepthScope database, composed of one mixin per job."""

from __future__ import annotations

from pathlib import Path

from engine.store.connection import connect_checked
from engine.store.errors import StoreError
from engine.store.export import StoreExport
from engine.store.reads import StoreReads
from engine.store.schema import StoreSchema
from engine.store.writes import StoreWrites

DEFAULT_DB_PATH = Path("data/depthscope.duckdb")
# How long a call waits for another process's (or thread's) short transaction before giving up.
DEFAULT_LOCK_TIMEOUT_S = 5.0


class Store(StoreSchema, StoreWrites, StoreReads, StoreExport):
    """A DepthScope database. Open with :meth:`Store.open`; use as a context manager."""

    @classmethod
    def open(
        cls,
        path: str | Path = DEFAULT_DB_PATH,
        *,
        read_only: bool = False,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        keep_open: bool = False,
        create: bool = True,
    ) -> Store:
        """Open (creating and migrating when writable) the database at ``path``.

        ``create=False`` is for commands that only add to an existing database (verdicts, labels):
        a path with no file there is refused (a mistyped ``--db``) instead of becoming an empty database.

        By default the file is opened only for each call and closed right after, so other processes
        can read and write it between calls; ``keep_open`` holds it for the store's life instead
        (faster, but other processes are locked out until :meth:`close`). A busy file is retried for
        ``lock_timeout_s`` seconds before StoreLockedError. Opening read-write also marks runs whose
        process died (or fell silent) as interrupted.
        """
        path = Path(path)
        if not create and not read_only and not path.exists():
            raise StoreError(
                f"database {path} does not exist: this command only adds to a database a sweep made; "
                "check --db (or run a sweep first)"
            )
        held = connect_checked(path, read_only, lock_timeout_s) if keep_open else None
        store = cls(path, read_only, held=held, lock_timeout_s=lock_timeout_s)
        try:
            with store._connection(write=not read_only):  # one open for schema check and bookkeeping
                store._prepare_schema()
                if not read_only:
                    store.mark_stale_runs()
        except BaseException:
            store.close()
            raise
        return store
