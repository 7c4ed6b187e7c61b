"""The store's errors: every one is a :class:`StoreError` with a message meant for a human."""

from __future__ import annotations

from pathlib import Path

from engine.errors import DepthScopeError


class StoreError(DepthScopeError):
    """Base class of every error raised by the store."""


class StoreLockedError(StoreError):
    """Another process holds the DuckDB file lock."""

    def __init__(self, message: str, path: Path, pid: int | None) -> None:
        super().__init__(message)
        self.path = path
        self.pid = pid


class NotAStoreError(StoreError):
    """The file is not a DuckDB database, or not one made by DepthScope. It is left untouched."""


class SchemaVersionError(StoreError):
    """The file's schema is newer than this code, or too old to be read without migrating."""


class ReadOnlyStoreError(StoreError):
    """A write was attempted on a store opened read-only."""


class StoreClosedError(StoreError):
    """The store was used after close()."""
