"""The DuckDB store: the only place that speaks SQL.

One DuckDB file holds models, prompt sets, generations, verdicts, runs and probe results. One
module per job: ``connection`` (opening, locking, cursors, transactions), ``schema`` (migrations),
``writes``, ``reads``, ``analytics`` (DataFrame aggregates), ``export``; ``database`` composes them
into :class:`Store`. Rules the package keeps:

* Values always travel as bound parameters (see ``sql``).
* Every row has a natural key, so re-saving cached work inserts nothing.
* Each batch is written in one transaction: a crash leaves the whole batch or none of it.
* One writing process per file; one Store may be shared by threads.
* Every error raised here is a :class:`StoreError` with a message meant for a human.
"""

from __future__ import annotations

from engine.store.database import DEFAULT_DB_PATH, Store
from engine.store.errors import (
    NotAStoreError,
    ReadOnlyStoreError,
    SchemaVersionError,
    StoreClosedError,
    StoreError,
    StoreLockedError,
)
from engine.store.export import EXPORT_FORMATS
from engine.store.records import ProbeRecord, PromptSetVersion, SavedPromptSet, StoredPromptSet
from engine.store.schema import MIGRATIONS, SCHEMA_VERSION, TABLES, Migration
from engine.store.writes import HUMAN_JUDGE

__all__ = [
    "DEFAULT_DB_PATH",
    "EXPORT_FORMATS",
    "HUMAN_JUDGE",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TABLES",
    "Migration",
    "NotAStoreError",
    "ProbeRecord",
    "ReadOnlyStoreError",
    "PromptSetVersion",
    "SavedPromptSet",
    "SchemaVersionError",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
    "StoredPromptSet",
]
