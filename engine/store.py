"""The DuckDB store: schema, migrations, every SQL statement of DepthScope, and file locking.

One DuckDB file holds models, prompt sets, generations, verdicts, runs and probe results.
Rules this module keeps:

* Values always travel as bound parameters. The only text spliced into SQL is table and column
  names taken from constants in this file, and fixed ``WHERE`` fragments.
* Every row has a natural key, so re-saving cached work inserts nothing (``ON CONFLICT DO
  NOTHING``) and each ``save_*`` call returns how many rows were new.
* Each batch is written in one transaction: a crash leaves the whole batch or none of it.
* DuckDB allows one writing process per file; readers may share it only while nobody writes.
  A lock conflict becomes :class:`StoreLockedError`. Inside a process one :class:`Store` may be
  shared by threads: every call runs on its own cursor and writes are serialised by a lock.
* Every error raised here is a :class:`StoreError` with a message meant for a human.

Timestamps are naive UTC.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import duckdb
import pandas as pd
import pyarrow as pa

from engine.types import Completion, GenerationParams, ModelInfo, Prompt, Verdict, completion_key, stable_hash

DEFAULT_DB_PATH = Path("data/depthscope.duckdb")
HUMAN_JUDGE = "human"  # the one judge whose verdicts may be overwritten (a person changed their mind)

_DUCKDB_MAGIC = b"DUCK"  # bytes 8..12 of every DuckDB database file
_DUCKDB_MAGIC_OFFSET = 8
# What DuckDB says when a file is not a database, fails its checksums, or is cut short.
_CORRUPTION_SIGNS = ("not a valid DuckDB database", "Corrupt database file", "Could not read enough bytes")


# --------------------------------------------------------------------------------------------- errors
class StoreError(Exception):
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


# --------------------------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema",
        (
            """CREATE TABLE schema_version (
                version INTEGER PRIMARY KEY, description VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)""",
            """CREATE TABLE models (
                model_hash VARCHAR PRIMARY KEY, model_id VARCHAR NOT NULL, architecture VARCHAR NOT NULL,
                n_layers INTEGER NOT NULL, hidden_size INTEGER NOT NULL, dtype VARCHAR NOT NULL,
                device VARCHAR NOT NULL, added_at TIMESTAMP NOT NULL)""",
            """CREATE TABLE prompt_sets (
                set_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, source VARCHAR NOT NULL,
                n_prompts INTEGER NOT NULL, added_at TIMESTAMP NOT NULL)""",
            # A prompt is stored once (keyed by text + context) and may belong to several sets.
            """CREATE TABLE prompts (
                prompt_key VARCHAR PRIMARY KEY, prompt_id VARCHAR NOT NULL, text VARCHAR NOT NULL,
                label VARCHAR NOT NULL, category VARCHAR NOT NULL, context VARCHAR NOT NULL,
                source VARCHAR NOT NULL, tags VARCHAR NOT NULL)""",
            """CREATE TABLE prompt_set_members (
                set_id VARCHAR NOT NULL, prompt_key VARCHAR NOT NULL, position INTEGER NOT NULL,
                prompt_id VARCHAR NOT NULL, PRIMARY KEY (set_id, prompt_key))""",
            """CREATE TABLE runs (
                run_id VARCHAR PRIMARY KEY, started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP,
                parameters JSON NOT NULL, status VARCHAR NOT NULL)""",
            """CREATE TABLE generations (
                completion_key VARCHAR PRIMARY KEY, model_hash VARCHAR NOT NULL, prompt_key VARCHAR NOT NULL,
                prompt_id VARCHAR NOT NULL, prompt_text VARCHAR NOT NULL, layers INTEGER NOT NULL,
                params_hash VARCHAR NOT NULL, params JSON, text VARCHAR NOT NULL,
                token_ids INTEGER[] NOT NULL, seconds DOUBLE NOT NULL, created_at TIMESTAMP NOT NULL)""",
            """CREATE TABLE verdicts (
                completion_key VARCHAR NOT NULL, judge VARCHAR NOT NULL, version VARCHAR NOT NULL,
                jailbroken BOOLEAN, raw VARCHAR NOT NULL, degenerate BOOLEAN NOT NULL, note VARCHAR NOT NULL,
                created_at TIMESTAMP NOT NULL, PRIMARY KEY (completion_key, judge, version))""",
        ),
    ),
    Migration(
        2,
        "probe results; generations remember their run",
        (
            """CREATE TABLE probe_results (
                model_hash VARCHAR NOT NULL, set_id VARCHAR NOT NULL, layer INTEGER NOT NULL,
                kind VARCHAR NOT NULL, accuracy DOUBLE NOT NULL, accuracy_std DOUBLE, auroc DOUBLE,
                extra JSON NOT NULL, created_at TIMESTAMP NOT NULL,
                PRIMARY KEY (model_hash, set_id, layer, kind))""",
            "ALTER TABLE generations ADD COLUMN run_id VARCHAR",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
TABLES = (
    "schema_version",
    "models",
    "prompt_sets",
    "prompts",
    "prompt_set_members",
    "runs",
    "generations",
    "verdicts",
    "probe_results",
)


# --------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class PromptSetInfo:
    set_id: str
    name: str
    source: str
    n_prompts: int
    added_at: datetime


class SavedPromptSet(NamedTuple):
    set_id: str
    new_prompts: int  # prompts not stored before (a prompt may already belong to another set)
    new_set: bool


@dataclass(frozen=True)
class ProbeRecord:
    """One probe evaluated at one layer. ``kind`` names the probe (e.g. "logreg", "diff-of-means")."""

    model_hash: str
    set_id: str
    layer: int
    kind: str
    accuracy: float
    accuracy_std: float | None = None
    auroc: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def prompt_key(text: str, context: str = "") -> str:
    """Identity of a prompt: its text plus its (HarmBench) context."""
    return stable_hash(["prompt", text, context])


def _key_of(prompt: Prompt | str) -> str:
    return prompt_key(prompt) if isinstance(prompt, str) else prompt_key(prompt.text, prompt.context)


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# --------------------------------------------------------------------------------------------- opening
# DuckDB shares one database instance per file inside a process, so two Store objects on the
# same file must share one write lock too.
_PATH_LOCKS: dict[str, threading.RLock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


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


def _connect(path: Path, read_only: bool, lock_timeout_s: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + lock_timeout_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as error:
            message = str(error)
            if "Could not set lock" in message or "Conflicting lock" in message:
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                text, pid = _lock_message(path, message, read_only)
                raise StoreLockedError(text, path, pid) from error
            if any(sign in message for sign in _CORRUPTION_SIGNS):
                raise NotAStoreError(
                    f"{path} is not a valid DuckDB database or is damaged ({message}); it was left untouched"
                ) from error
            if "different configuration" in message:
                raise StoreError(
                    f"database {path} is already open in this process in the other mode "
                    f"(read-only vs read-write); reuse that Store instead of opening a second one"
                ) from error
            raise StoreError(f"cannot open database {path}: {message}") from error


# --------------------------------------------------------------------------------------------- the store
_F = TypeVar("_F", bound=Callable[..., Any])


def _translated(action: str) -> Callable[[_F], _F]:
    """Turn DuckDB's exceptions into StoreError, naming what we were doing and on which file."""

    def decorate(method: _F) -> _F:
        @functools.wraps(method)
        def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except StoreError:
                raise
            except duckdb.Error as error:
                raise StoreError(f"{action} failed on {self.path}: {error}") from error

        return wrapper  # type: ignore[return-value]

    return decorate


_GENERATION_SCHEMA = pa.schema(
    [
        ("completion_key", pa.string()),
        ("model_hash", pa.string()),
        ("prompt_key", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt_text", pa.string()),
        ("layers", pa.int32()),
        ("params_hash", pa.string()),
        ("params", pa.string()),
        ("text", pa.string()),
        ("token_ids", pa.list_(pa.int32())),
        ("seconds", pa.float64()),
        ("created_at", pa.timestamp("us")),
        ("run_id", pa.string()),
    ]
)
_VERDICT_SCHEMA = pa.schema(
    [
        ("completion_key", pa.string()),
        ("judge", pa.string()),
        ("version", pa.string()),
        ("jailbroken", pa.bool_()),
        ("raw", pa.string()),
        ("degenerate", pa.bool_()),
        ("note", pa.string()),
        ("created_at", pa.timestamp("us")),
    ]
)
_PROMPT_COLUMNS = ("prompt_key", "prompt_id", "text", "label", "category", "context", "source", "tags")
_MEMBER_COLUMNS = ("set_id", "prompt_key", "position", "prompt_id")
_PROBE_COLUMNS = (
    "model_hash",
    "set_id",
    "layer",
    "kind",
    "accuracy",
    "accuracy_std",
    "auroc",
    "extra",
    "created_at",
)
_COMPLETION_COLUMNS = "model_hash, prompt_id, prompt_text, layers, params_hash, text, token_ids, seconds"

# Generations with the label/category of their prompt: matched by key, else by text (harmful wins),
# so a generation still finds its label if the caller keyed it differently.
_LABELLED_GENERATIONS = """
    SELECT g.*, coalesce(pk.label, pt.label) AS label, coalesce(pk.category, pt.category) AS category
    FROM generations g
    LEFT JOIN prompts pk ON pk.prompt_key = g.prompt_key
    LEFT JOIN (
        SELECT text,
               CASE WHEN bool_or(label = 'harmful') THEN 'harmful' ELSE min(label) END AS label,
               min(category) AS category
        FROM prompts GROUP BY text
    ) pt ON pt.text = g.prompt_text
"""


class Store:
    """A DepthScope database. Open with :meth:`Store.open`; use as a context manager."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, read_only: bool) -> None:
        self._con: duckdb.DuckDBPyConnection | None = con
        self.path = path
        self.read_only = read_only
        self._write_lock = _write_lock_for(path)
        self.schema_version = 0

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(
        cls, path: str | Path = DEFAULT_DB_PATH, *, read_only: bool = False, lock_timeout_s: float = 0.0
    ) -> Store:
        """Open (creating and migrating when writable) the database at ``path``.

        ``lock_timeout_s`` retries a locked file for that long before raising StoreLockedError.
        """
        path = Path(path)
        try:
            _refuse_non_duckdb_file(path)
            if read_only and not path.exists():
                raise StoreError(f"database {path} does not exist; run a sweep first or pass another --db")
            if not read_only:
                path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot open database {path}: {error}") from error
        store = cls(_connect(path, read_only, lock_timeout_s), path, read_only)
        try:
            store._prepare_schema()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        with self._write_lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"Store({str(self.path)!r}, {mode}, schema v{self.schema_version})"

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A private cursor per call: DuckDB connections must not be shared across threads."""
        con = self._con
        if con is None:
            raise StoreClosedError(f"store {self.path} is closed")
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
        with self._write_lock, self._cursor() as cursor:
            cursor.begin()
            try:
                yield cursor
            except BaseException:
                cursor.rollback()
                raise
            cursor.commit()

    # ------------------------------------------------------------------ schema
    @_translated("reading the schema")
    def _prepare_schema(self) -> None:
        with self._write_lock:
            version = self._stored_schema_version()
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"database {self.path} has schema v{version}, newer than this DepthScope "
                    f"(v{SCHEMA_VERSION}); upgrade DepthScope or use another --db. The file was not changed."
                )
            if version < SCHEMA_VERSION:
                if self.read_only:
                    raise SchemaVersionError(
                        f"database {self.path} has schema v{version} and needs migrating to "
                        f"v{SCHEMA_VERSION}; "
                        "open it once read-write (any engine command does) before reading it read-only"
                    )
                self._migrate_from(version)
            self.schema_version = SCHEMA_VERSION

    def _stored_schema_version(self) -> int:
        with self._cursor() as cur:
            tables = {
                row[0]
                for row in cur.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'main' AND table_catalog = current_database()"
                ).fetchall()
            }
            if "schema_version" in tables:
                (version,) = cur.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
                return int(version)
        if tables:
            raise NotAStoreError(
                f"{self.path} is a DuckDB database but not a DepthScope one "
                f"(tables: {', '.join(sorted(tables))}); it was left untouched"
            )
        return 0

    def _migrate_from(self, version: int) -> None:
        for migration in MIGRATIONS:
            if migration.version <= version:
                continue
            with self._cursor() as cur:
                cur.begin()
                try:
                    for statement in migration.statements:
                        cur.execute(statement)
                    cur.execute(
                        "INSERT INTO schema_version VALUES (?, ?, ?)",
                        [migration.version, migration.description, _utc_now()],
                    )
                except BaseException:
                    cur.rollback()
                    raise
                cur.commit()

    # ------------------------------------------------------------------ writes
    @staticmethod
    def _insert_new(
        cur: duckdb.DuckDBPyConnection, table: str, rows: pa.Table, on_conflict: str = "DO NOTHING"
    ) -> int:
        """INSERT the Arrow rows, skipping keys already present; returns how many rows were written."""
        if rows.num_rows == 0:
            return 0
        columns = ", ".join(rows.column_names)
        cur.register("incoming_rows", rows)
        try:
            # Only identifiers from this module's constants are spliced in; the values come from Arrow.
            sql = (
                f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming_rows "
                f"ON CONFLICT {on_conflict} RETURNING 1"
            )
            return len(cur.execute(sql).fetchall())
        finally:
            cur.unregister("incoming_rows")

    @_translated("saving a model")
    def save_model(self, info: ModelInfo) -> int:
        """Remember a model (insert if absent). Returns 1 if it was new."""
        row = asdict(info) | {"added_at": _utc_now()}
        with self._transaction() as cur:
            return self._insert_new(cur, "models", pa.Table.from_pylist([row]))

    @_translated("saving a prompt set")
    def save_prompt_set(
        self, name: str, prompts: Sequence[Prompt], *, source: str = "", set_id: str | None = None
    ) -> SavedPromptSet:
        """Store a prompt set and its prompts; ``set_id`` defaults to a hash of the name and contents."""
        members: dict[str, Prompt] = {}
        for prompt in prompts:
            members.setdefault(_key_of(prompt), prompt)  # a duplicate prompt keeps its first position
        set_id = set_id or stable_hash(["prompt_set", name, list(members)])
        prompt_rows = [
            {"prompt_key": key} | {column: getattr(p, column) for column in _PROMPT_COLUMNS[1:]}
            for key, p in members.items()
        ]
        member_rows = [
            {"set_id": set_id, "prompt_key": key, "position": position, "prompt_id": p.prompt_id}
            for position, (key, p) in enumerate(members.items())
        ]
        set_row = {"set_id": set_id, "name": name, "source": source, "n_prompts": len(members)}
        with self._transaction() as cur:
            new_set = self._insert_new(
                cur, "prompt_sets", pa.Table.from_pylist([set_row | {"added_at": _utc_now()}])
            )
            new_prompts = self._insert_new(
                cur, "prompts", _table(prompt_rows, _PROMPT_COLUMNS, _prompt_schema())
            )
            self._insert_new(
                cur, "prompt_set_members", _table(member_rows, _MEMBER_COLUMNS, _member_schema())
            )
        return SavedPromptSet(set_id, new_prompts, bool(new_set))

    @_translated("starting a run")
    def start_run(self, parameters: Mapping[str, Any], *, run_id: str | None = None) -> str:
        """Record that a run began; returns its id."""
        run_id = run_id or uuid.uuid4().hex[:16]
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO runs (run_id, started_at, parameters, status) VALUES (?, ?, ?, 'running')",
                [run_id, _utc_now(), json.dumps(dict(parameters), sort_keys=True, default=str)],
            )
        return run_id

    @_translated("finishing a run")
    def finish_run(self, run_id: str, status: str = "done") -> None:
        with self._transaction() as cur:
            updated = cur.execute(
                "UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ? RETURNING 1",
                [status, _utc_now(), run_id],
            ).fetchall()
        if not updated:
            raise StoreError(f"no run {run_id!r} in {self.path}")

    @_translated("saving generations")
    def save_generations(
        self,
        completions: Sequence[Completion],
        *,
        params: GenerationParams | None = None,
        run_id: str | None = None,
        prompt_keys: Sequence[str] | None = None,
    ) -> int:
        """Store completions (one transaction); returns how many were new.

        ``prompt_keys`` (aligned with ``completions``) names the stored prompt each completion came
        from; by default it is ``prompt_key(completion.prompt_text)``, right for prompts without context.
        """
        if prompt_keys is not None and len(prompt_keys) != len(completions):
            raise StoreError(f"got {len(prompt_keys)} prompt keys for {len(completions)} completions")
        params_json = None
        if params is not None:
            params_json = json.dumps(asdict(params), sort_keys=True)
            stray = {c.params_hash for c in completions} - {params.key()}
            if stray:
                raise StoreError(
                    f"completions with params_hash {sorted(stray)} do not match params {params.key()}"
                )
        now = _utc_now()
        rows = [
            {
                "completion_key": c.key,
                "model_hash": c.model_hash,
                "prompt_key": prompt_keys[i] if prompt_keys is not None else prompt_key(c.prompt_text),
                "prompt_id": c.prompt_id,
                "prompt_text": c.prompt_text,
                "layers": int(c.layers),
                "params_hash": c.params_hash,
                "params": params_json,
                "text": c.text,
                "token_ids": [int(t) for t in c.token_ids],
                "seconds": float(c.seconds),
                "created_at": now,
                "run_id": run_id,
            }
            for i, c in enumerate(completions)
        ]
        with self._transaction() as cur:
            return self._insert_new(cur, "generations", pa.Table.from_pylist(rows, schema=_GENERATION_SCHEMA))

    @_translated("saving verdicts")
    def save_verdicts(self, verdicts: Sequence[Verdict]) -> int:
        """Store verdicts in one transaction; returns how many rows were written.

        Machine verdicts are insert-if-absent. Human labels (judge == HUMAN_JUDGE) replace an
        earlier human label when they differ; a replaced label counts as written.
        """
        now = _utc_now()
        machine = [_verdict_row(v, now) for v in verdicts if v.judge != HUMAN_JUDGE]
        # The last human label for a completion wins; DuckDB cannot upsert one row twice per statement.
        human = {
            (v.completion_key, v.version): _verdict_row(v, now) for v in verdicts if v.judge == HUMAN_JUDGE
        }
        overwrite = (
            "(completion_key, judge, version) DO UPDATE SET jailbroken = excluded.jailbroken, "
            "raw = excluded.raw, degenerate = excluded.degenerate, note = excluded.note, "
            "created_at = excluded.created_at "
            "WHERE verdicts.jailbroken IS DISTINCT FROM excluded.jailbroken OR verdicts.raw <> excluded.raw "
            "OR verdicts.degenerate <> excluded.degenerate OR verdicts.note <> excluded.note"
        )
        with self._transaction() as cur:
            written = self._insert_new(cur, "verdicts", pa.Table.from_pylist(machine, schema=_VERDICT_SCHEMA))
            human_rows = pa.Table.from_pylist(list(human.values()), schema=_VERDICT_SCHEMA)
            return written + self._insert_new(cur, "verdicts", human_rows, on_conflict=overwrite)

    @_translated("saving probe results")
    def save_probe_results(self, results: Iterable[ProbeRecord], *, replace: bool = False) -> int:
        """Store probe results (insert if absent, or overwrite with ``replace``); returns rows written."""
        now = _utc_now()
        rows = {
            (r.model_hash, r.set_id, int(r.layer), r.kind): {
                "model_hash": r.model_hash,
                "set_id": r.set_id,
                "layer": int(r.layer),
                "kind": r.kind,
                "accuracy": float(r.accuracy),
                "accuracy_std": None if r.accuracy_std is None else float(r.accuracy_std),
                "auroc": None if r.auroc is None else float(r.auroc),
                "extra": json.dumps(dict(r.extra), sort_keys=True, default=str),
                "created_at": now,
            }
            for r in results
        }
        on_conflict = "DO NOTHING"
        if replace:
            updates = ", ".join(f"{c} = excluded.{c}" for c in _PROBE_COLUMNS[4:])
            on_conflict = f"(model_hash, set_id, layer, kind) DO UPDATE SET {updates}"
        with self._transaction() as cur:
            return self._insert_new(
                cur,
                "probe_results",
                _table(list(rows.values()), _PROBE_COLUMNS, _probe_schema()),
                on_conflict,
            )

    # ------------------------------------------------------------------ reads
    @_translated("listing models")
    def list_models(self) -> list[ModelInfo]:
        with self._cursor() as cur:
            rows = cur.execute(
                "SELECT model_id, model_hash, architecture, n_layers, hidden_size, dtype, device "
                "FROM models ORDER BY added_at, model_id"
            ).fetchall()
        return [ModelInfo(*row) for row in rows]

    @_translated("reading a model")
    def get_model(self, model_hash: str) -> ModelInfo | None:
        with self._cursor() as cur:
            row = cur.execute(
                "SELECT model_id, model_hash, architecture, n_layers, hidden_size, dtype, device "
                "FROM models WHERE model_hash = ?",
                [model_hash],
            ).fetchone()
        return None if row is None else ModelInfo(*row)

    @_translated("listing prompt sets")
    def list_prompt_sets(self) -> list[PromptSetInfo]:
        with self._cursor() as cur:
            rows = cur.execute(
                "SELECT set_id, name, source, n_prompts, added_at FROM prompt_sets ORDER BY added_at, name"
            ).fetchall()
        return [PromptSetInfo(*row) for row in rows]

    @_translated("reading prompts")
    def get_prompts(self, set_id: str) -> list[Prompt]:
        """The prompts of a set, in their original order (ids as given in that set)."""
        with self._cursor() as cur:
            rows = cur.execute(
                "SELECT m.prompt_id, p.text, p.label, p.category, p.context, p.source, p.tags "
                "FROM prompt_set_members m JOIN prompts p USING (prompt_key) "
                "WHERE m.set_id = ? ORDER BY m.position",
                [set_id],
            ).fetchall()
        return [Prompt(*row) for row in rows]

    @_translated("listing runs")
    def list_runs(self) -> pd.DataFrame:
        with self._cursor() as cur:
            return cur.execute(
                "SELECT run_id, started_at, finished_at, status, parameters FROM runs ORDER BY started_at"
            ).df()

    @_translated("finding missing generations")
    def missing_generations(
        self, model_hash: str, prompts: Iterable[Prompt | str], layers: Iterable[int], params_hash: str
    ) -> set[tuple[str, int]]:
        """The (prompt_key, layers) pairs that have no stored completion yet.

        A completion is identified exactly as :attr:`Completion.key` does: by the prompt's text.
        """
        wanted: dict[str, tuple[str, int]] = {}
        depths = [int(k) for k in layers]
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else prompt.text
            for k in depths:
                wanted[completion_key(model_hash, text, k, params_hash)] = (_key_of(prompt), k)
        with self._cursor() as cur:
            present = {
                row[0]
                for row in cur.execute(
                    "SELECT completion_key FROM generations "
                    "WHERE completion_key IN (SELECT unnest(?::VARCHAR[]))",
                    [list(wanted)],
                ).fetchall()
            }
        return {pair for key, pair in wanted.items() if key not in present}

    @_translated("reading generations")
    def get_generations(
        self,
        *,
        model_hash: str | None = None,
        layers: int | Iterable[int] | None = None,
        params_hash: str | None = None,
        prompt_keys: Iterable[str] | None = None,
    ) -> list[Completion]:
        """Stored completions matching every given filter (all of them when none is given)."""
        where, args = _generation_filters(model_hash, layers, params_hash, prompt_keys)
        with self._cursor() as cur:
            rows = cur.execute(
                f"SELECT {_COMPLETION_COLUMNS} FROM generations g {where} "
                "ORDER BY model_hash, params_hash, prompt_key, layers",
                args,
            ).fetchall()
        return [_completion(row) for row in rows]

    @_translated("reading a completion")
    def get_completion(self, key: str) -> Completion | None:
        with self._cursor() as cur:
            row = cur.execute(
                f"SELECT {_COMPLETION_COLUMNS} FROM generations WHERE completion_key = ?", [key]
            ).fetchone()
        return None if row is None else _completion(row)

    @_translated("finding missing verdicts")
    def missing_verdicts(self, completion_keys: Iterable[str], judge: str, version: str) -> set[str]:
        """The given completion keys that have no verdict from this judge version."""
        keys = set(completion_keys)
        with self._cursor() as cur:
            judged = cur.execute(
                "SELECT completion_key FROM verdicts WHERE judge = ? AND version = ? "
                "AND completion_key IN (SELECT unnest(?::VARCHAR[]))",
                [judge, version, list(keys)],
            ).fetchall()
        return keys - {row[0] for row in judged}

    @_translated("reading verdicts")
    def verdicts_for(
        self,
        completion_keys: Iterable[str] | None = None,
        *,
        judge: str | None = None,
        version: str | None = None,
    ) -> list[Verdict]:
        clauses, args = [], []
        if completion_keys is not None:
            clauses.append("completion_key IN (SELECT unnest(?::VARCHAR[]))")
            args.append(list(completion_keys))
        for column, value in (("judge", judge), ("version", version)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        with self._cursor() as cur:
            rows = cur.execute(
                "SELECT completion_key, judge, version, jailbroken, raw, degenerate, note FROM verdicts"
                f"{_where(clauses)} ORDER BY completion_key, judge, version",
                args,
            ).fetchall()
        return [Verdict(*row) for row in rows]

    @_translated("computing the ASR table")
    def asr_table(
        self,
        judge: str | None = None,
        version: str | None = None,
        *,
        params_hash: str | None = None,
        set_id: str | None = None,
    ) -> pd.DataFrame:
        """Verdict counts per (model, generation params, depth, judge, version), harmful prompts only.

        Columns: model_hash, model_id, n_layers, params_hash, layers, depth_percent, judge, version,
        n_judged, n_jailbroken, n_refused (judged not jailbroken), n_undecided (jailbroken NULL),
        n_degenerate.
        """
        clauses, args = ["g.label = 'harmful'"], []
        for column, value in (("v.judge", judge), ("v.version", version), ("g.params_hash", params_hash)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if set_id is not None:
            clauses.append(_IN_SET)
            args += [set_id, set_id]
        sql = f"""
            WITH g AS ({_LABELLED_GENERATIONS})
            SELECT g.model_hash, m.model_id, m.n_layers, g.params_hash, g.layers,
                   100.0 * g.layers / m.n_layers AS depth_percent, v.judge, v.version,
                   count(*) AS n_judged,
                   count(*) FILTER (WHERE v.jailbroken) AS n_jailbroken,
                   count(*) FILTER (WHERE NOT v.jailbroken) AS n_refused,
                   count(*) FILTER (WHERE v.jailbroken IS NULL) AS n_undecided,
                   count(*) FILTER (WHERE v.degenerate) AS n_degenerate
            FROM g JOIN verdicts v USING (completion_key) LEFT JOIN models m USING (model_hash)
            {_where(clauses)}
            GROUP BY ALL
            ORDER BY g.model_hash, g.params_hash, v.judge, v.version, g.layers
        """
        with self._cursor() as cur:
            frame = cur.execute(sql, args).df()
        for column in ("n_judged", "n_jailbroken", "n_refused", "n_undecided", "n_degenerate"):
            frame[column] = frame[column].astype("int64")
        return frame

    @_translated("pairing judges")
    def judge_pairs(
        self, judge_a: str, judge_b: str, *, version_a: str | None = None, version_b: str | None = None
    ) -> pd.DataFrame:
        """Completions judged by both judges, side by side (the latest verdict when no version is given).

        Columns: completion_key, model_hash, params_hash, layers, label, version_a, jailbroken_a,
        degenerate_a, version_b, jailbroken_b, degenerate_b.
        """
        side_a, args_a = _latest_verdicts(judge_a, version_a)
        side_b, args_b = _latest_verdicts(judge_b, version_b)
        sql = f"""
            WITH g AS ({_LABELLED_GENERATIONS}), a AS ({side_a}), b AS ({side_b})
            SELECT g.completion_key, g.model_hash, g.params_hash, g.layers, g.label,
                   a.version AS version_a, a.jailbroken AS jailbroken_a, a.degenerate AS degenerate_a,
                   b.version AS version_b, b.jailbroken AS jailbroken_b, b.degenerate AS degenerate_b
            FROM g JOIN a USING (completion_key) JOIN b USING (completion_key)
            ORDER BY g.model_hash, g.params_hash, g.layers, g.completion_key
        """
        with self._cursor() as cur:
            return cur.execute(sql, args_a + args_b).df()

    @_translated("reading probe results")
    def get_probe_results(
        self, *, model_hash: str | None = None, set_id: str | None = None, kind: str | None = None
    ) -> list[ProbeRecord]:
        clauses, args = [], []
        for column, value in (("model_hash", model_hash), ("set_id", set_id), ("kind", kind)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        with self._cursor() as cur:
            rows = cur.execute(
                f"SELECT {', '.join(_PROBE_COLUMNS[:-1])} FROM probe_results{_where(clauses)} "
                "ORDER BY model_hash, set_id, kind, layer",
                args,
            ).fetchall()
        return [ProbeRecord(*row[:-1], extra=json.loads(row[-1])) for row in rows]

    @_translated("reading results")
    def results_frame(self, *, model_hash: str | None = None, judge: str | None = None) -> pd.DataFrame:
        """Generations joined with their prompt label and verdicts: one row per (generation, verdict).

        Generations without a verdict appear once with empty verdict columns.
        """
        clauses, args = [], []
        if model_hash is not None:
            clauses.append("g.model_hash = ?")
            args.append(model_hash)
        verdict_join = "LEFT JOIN verdicts v ON v.completion_key = g.completion_key"
        if judge is not None:
            verdict_join += " AND v.judge = ?"
            args.insert(0, judge)
        sql = f"""
            WITH g AS ({_LABELLED_GENERATIONS})
            SELECT g.completion_key, g.model_hash, m.model_id, g.prompt_key, g.prompt_id, g.label, g.category,
                   g.prompt_text, g.layers, m.n_layers, g.params_hash, g.params, g.text, g.token_ids,
                   g.seconds, g.created_at, g.run_id, v.judge, v.version, v.jailbroken, v.degenerate, v.raw,
                   v.note, v.created_at AS judged_at
            FROM g {verdict_join} LEFT JOIN models m ON m.model_hash = g.model_hash
            {_where(clauses)}
            ORDER BY g.model_hash, g.params_hash, g.prompt_key, g.layers, v.judge, v.version
        """
        with self._cursor() as cur:
            return cur.execute(sql, args).df()

    def export(self, path: str | Path, fmt: str | None = None) -> Path:
        """Write :meth:`results_frame` to CSV or Parquet (format from ``fmt`` or the file suffix).

        In CSV, token ids are written space-separated. The file appears atomically.
        """
        path = Path(path)
        fmt = (fmt or path.suffix.lstrip(".")).lower()
        if fmt not in ("csv", "parquet"):
            raise StoreError(f"cannot export to {fmt!r}: choose csv or parquet")
        frame = self.results_frame()
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            if fmt == "csv":
                frame["token_ids"] = [" ".join(str(t) for t in ids) for ids in frame["token_ids"]]
                # pandas leaves a lone "\r" unquoted, which splits rows on reading: quote every string.
                frame.to_csv(temporary, index=False, quoting=csv.QUOTE_NONNUMERIC)
            else:
                frame.to_parquet(temporary, index=False)
            os.replace(temporary, path)
        except OSError as error:
            raise StoreError(f"cannot export to {path}: {error}") from error
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return path

    @_translated("counting rows")
    def table_counts(self) -> dict[str, int]:
        with self._cursor() as cur:
            # Table names come from the TABLES constant, never from a caller.
            return {name: int(cur.execute(f"SELECT count(*) FROM {name}").fetchone()[0]) for name in TABLES}


# --------------------------------------------------------------------------------------------- helpers
_IN_SET = (
    "(g.prompt_key IN (SELECT prompt_key FROM prompt_set_members WHERE set_id = ?) "
    "OR g.prompt_text IN (SELECT p.text FROM prompt_set_members s JOIN prompts p USING (prompt_key) "
    "WHERE s.set_id = ?))"
)


def _where(clauses: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


def _generation_filters(
    model_hash: str | None,
    layers: int | Iterable[int] | None,
    params_hash: str | None,
    prompt_keys: Iterable[str] | None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in (("model_hash", model_hash), ("params_hash", params_hash)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if layers is not None:
        clauses.append("layers IN (SELECT unnest(?::INTEGER[]))")
        args.append([int(layers)] if isinstance(layers, int) else [int(k) for k in layers])
    if prompt_keys is not None:
        clauses.append("prompt_key IN (SELECT unnest(?::VARCHAR[]))")
        args.append(list(prompt_keys))
    return _where(clauses), args


def _latest_verdicts(judge: str, version: str | None) -> tuple[str, list[Any]]:
    """SQL for one verdict per completion from ``judge``: that version, or the newest one."""
    if version is not None:
        return "SELECT * FROM verdicts WHERE judge = ? AND version = ?", [judge, version]
    return (
        "SELECT * FROM verdicts WHERE judge = ? "
        "QUALIFY row_number() OVER (PARTITION BY completion_key ORDER BY created_at DESC, version DESC) = 1",
        [judge],
    )


def _completion(row: Sequence[Any]) -> Completion:
    model_hash, prompt_id, prompt_text, layers, params_hash, text, token_ids, seconds = row
    return Completion(
        model_hash, prompt_id, prompt_text, int(layers), params_hash, text, tuple(token_ids), seconds
    )


def _verdict_row(verdict: Verdict, now: datetime) -> dict[str, Any]:
    return asdict(verdict) | {"created_at": now}


def _table(rows: list[dict[str, Any]], columns: Sequence[str], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{c: row[c] for c in columns} for row in rows], schema=schema)


def _prompt_schema() -> pa.Schema:
    return pa.schema([(c, pa.string()) for c in _PROMPT_COLUMNS])


def _member_schema() -> pa.Schema:
    return pa.schema(
        [
            ("set_id", pa.string()),
            ("prompt_key", pa.string()),
            ("position", pa.int32()),
            ("prompt_id", pa.string()),
        ]
    )


def _probe_schema() -> pa.Schema:
    return pa.schema(
        [
            ("model_hash", pa.string()),
            ("set_id", pa.string()),
            ("layer", pa.int32()),
            ("kind", pa.string()),
            ("accuracy", pa.float64()),
            ("accuracy_std", pa.float64()),
            ("auroc", pa.float64()),
            ("extra", pa.string()),
            ("created_at", pa.timestamp("us")),
        ]
    )
