"""The :class:`Store`: one DepthScope database, composed of one mixin per job."""

from __future__ import annotations

from pathlib import Path

from engine.store.connection import connect_checked
from engine.store.export import StoreExport
from engine.store.reads import StoreReads
from engine.store.schema import StoreSchema
from engine.store.writes import StoreWrites

DEFAULT_DB_PATH = Path("data/depthscope.duckdb")


class Store(StoreSchema, StoreWrites, StoreReads, StoreExport):
    """A DepthScope database. Open with :meth:`Store.open`; use as a context manager."""

    @classmethod
    def open(
        cls, path: str | Path = DEFAULT_DB_PATH, *, read_only: bool = False, lock_timeout_s: float = 0.0
    ) -> Store:
        """Open (creating and migrating when writable) the database at ``path``.

        ``lock_timeout_s`` retries a locked file for that long before raising StoreLockedError.
        """
        path = Path(path)
        store = cls(connect_checked(path, read_only, lock_timeout_s), path, read_only)
        try:
            store._prepare_schema()
        except BaseException:
            store.close()
            raise
        return store
