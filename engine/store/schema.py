"""The schema as a list of migrations, and recognising (positively) a DepthScope database.

A DepthScope file carries a marker table (``depthscope_marker``, one row ``'DepthScope'``), written in
the same transaction as its first migrations. Files made before the marker existed are recognised by
their exact tables and columns (those the migrations of that version create) and get the marker when
they are migrated. Anything else (another application's file, even one with a ``schema_version``
table) is refused before a single byte of it changes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import duckdb

from engine.store.connection import StoreConnection, translated, utc_now
from engine.store.errors import NotAStoreError, SchemaVersionError
from engine.store.sql import MEMBERS_CONTENT_HASH


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
    # One prompt text may be harmful in one set and benign in another: the label a report
    # uses is the one the prompt has in its set. Existing members take the label their prompt had.
    Migration(
        3,
        "prompt labels belong to a prompt within its set",
        (
            "ALTER TABLE prompt_set_members ADD COLUMN label VARCHAR",
            "UPDATE prompt_set_members m SET label = p.label FROM prompts p "
            "WHERE p.prompt_key = m.prompt_key",
        ),
    ),
    Migration(
        4,
        "generations remember how many prompt tokens were cut to fit the model's context",
        ("ALTER TABLE generations ADD COLUMN prompt_truncated_tokens INTEGER DEFAULT 0",),
    ),
    # The full-depth model's NLL per completion (NULL until scored), and which incoherence
    # detector set each verdict's ``degenerate`` flag (NULL: one from before versions were recorded).
    Migration(
        5,
        "full-depth NLL per completion; the incoherence detector's version per verdict",
        (
            "ALTER TABLE generations ADD COLUMN full_depth_nll DOUBLE",
            "ALTER TABLE verdicts ADD COLUMN degeneracy_version VARCHAR",
        ),
    ),
    Migration(
        6,
        "a marker naming the file a DepthScope database",
        (
            "CREATE TABLE depthscope_marker (application VARCHAR PRIMARY KEY)",
            "INSERT INTO depthscope_marker VALUES ('DepthScope')",
        ),
    ),
    Migration(
        7,
        "runs remember their process, host and last sign of life",
        (
            "ALTER TABLE runs ADD COLUMN pid INTEGER",
            "ALTER TABLE runs ADD COLUMN host VARCHAR",
            "ALTER TABLE runs ADD COLUMN heartbeat_at TIMESTAMP",
        ),
    ),
    # Early exit: the layer each generated token exited at, and their mean (compute used =
    # mean / L). Older rows keep NULL: every token of a static run exited at its ``layers``.
    Migration(
        8,
        "generations remember the layer each token exited at (early exit)",
        (
            "ALTER TABLE generations ADD COLUMN exit_layers INTEGER[]",
            "ALTER TABLE generations ADD COLUMN mean_exit_layers DOUBLE",
        ),
    ),
    # A prompt set loaded from a file is a version: its name plus a hash of its members (key, id, label,
    # category, tags). An edited file is a new version, reported on its own; the version saved last is
    # the set's current one. Members keep their own category and tags (a version may change them).
    Migration(
        9,
        "prompt sets are versioned by their content; members keep their category and tags",
        (
            "ALTER TABLE prompt_sets ADD COLUMN content_hash VARCHAR",
            "ALTER TABLE prompt_sets ADD COLUMN saved_at TIMESTAMP",
            "ALTER TABLE prompt_set_members ADD COLUMN category VARCHAR",
            "ALTER TABLE prompt_set_members ADD COLUMN tags VARCHAR",
            "UPDATE prompt_set_members m SET category = p.category, tags = p.tags FROM prompts p "
            "WHERE p.prompt_key = m.prompt_key",
            f"UPDATE prompt_sets s SET content_hash = h.content_hash FROM ("
            f"SELECT set_id, {MEMBERS_CONTENT_HASH} AS content_hash FROM prompt_set_members GROUP BY set_id"
            f") h WHERE h.set_id = s.set_id",
            "UPDATE prompt_sets SET saved_at = added_at",
        ),
    ),
    # With the pid, the process's start time tells a run's own process from a later one that was given
    # the same pid (NULL for older runs and where the system does not say).
    Migration(
        10,
        "runs remember when their process started (a reused pid is not the run's process)",
        ("ALTER TABLE runs ADD COLUMN process_started VARCHAR",),
    ),
    # Self-speculative decoding: the share of drafted tokens the full model accepted, and the layer
    # passes actually spent per generated token (``mean_exit_layers`` holds the same compute for it).
    # NULL for every other rule.
    Migration(
        11,
        "generations remember speculative decoding's acceptance rate and layer compute",
        (
            "ALTER TABLE generations ADD COLUMN acceptance_rate DOUBLE",
            "ALTER TABLE generations ADD COLUMN layer_compute DOUBLE",
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
    "depthscope_marker",
)
MARKER_TABLE = "depthscope_marker"
MARKER_VALUE = "DepthScope"
# Versions whose files carry no marker and are recognised by their exact tables and columns instead.
_MARKER_VERSION = next(m.version for m in MIGRATIONS if any(MARKER_TABLE in s for s in m.statements))
_LEGACY_VERSIONS = tuple(m.version for m in MIGRATIONS if m.version < _MARKER_VERSION)

# Every column of every table or view in the open database: (schema, table, column, type).
_COLUMNS_SQL = (
    "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
    "WHERE table_catalog = current_database()"
)

Layout = frozenset[tuple[str, str, str, str]]


def _layout(cur: duckdb.DuckDBPyConnection) -> Layout:
    return frozenset(cur.execute(_COLUMNS_SQL).fetchall())


def _apply(cur: duckdb.DuckDBPyConnection, migrations: tuple[Migration, ...]) -> None:
    for migration in migrations:
        for statement in migration.statements:
            cur.execute(statement)
        cur.execute(
            "INSERT INTO schema_version VALUES (?, ?, ?)",
            [migration.version, migration.description, utc_now()],
        )


@functools.cache
def layout_of_version(version: int) -> Layout:
    """The tables and columns a DepthScope file of ``version`` has (built in memory by its migrations)."""
    with duckdb.connect(":memory:") as con:
        _apply(con, tuple(m for m in MIGRATIONS if m.version <= version))
        return _layout(con)


def _tables(layout: Layout) -> set[str]:
    return {f"{schema}.{table}" if schema != "main" else table for schema, table, _c, _t in layout}


def _difference(found: Layout, expected: Layout) -> str:
    missing, extra = sorted(_tables(expected) - _tables(found)), sorted(_tables(found) - _tables(expected))
    if missing or extra:
        return f"missing tables: {', '.join(missing) or 'none'}; other tables: {', '.join(extra) or 'none'}"
    columns = sorted(f"{t}.{c}" for _s, t, c, _ty in found ^ expected)
    return f"columns differ: {', '.join(columns[:8])}"


class StoreSchema(StoreConnection):
    """Bring a freshly opened file to :data:`SCHEMA_VERSION`, or refuse it without changing it."""

    @translated("reading the schema")
    def _prepare_schema(self) -> None:
        with self._write_lock, self._connection(write=not self.read_only):
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
        """The file's schema version, or NotAStoreError (file untouched) when it is not DepthScope's."""
        with self._cursor() as cur:
            layout = _layout(cur)
            if not layout:
                return 0  # an empty DuckDB file: new, or its first migration never committed
            if any(table == MARKER_TABLE for _s, table, _c, _t in layout):
                return self._marked_version(cur)
            return self._legacy_version(cur, layout)

    def _marked_version(self, cur: duckdb.DuckDBPyConnection) -> int:
        applications = [row[0] for row in cur.execute(f"SELECT application FROM {MARKER_TABLE}").fetchall()]
        if applications != [MARKER_VALUE]:
            raise NotAStoreError(
                f"{self.path} is not a DepthScope database: its {MARKER_TABLE} table names "
                f"{applications!r}, not {MARKER_VALUE!r}; it was left untouched"
            )
        (version,) = cur.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        return int(version)

    def _legacy_version(self, cur: duckdb.DuckDBPyConnection, layout: Layout) -> int:
        """A file from before the marker: DepthScope's only if its tables and columns match exactly."""
        for version in _LEGACY_VERSIONS:
            if layout == layout_of_version(version):
                (recorded,) = cur.execute(
                    "SELECT list(version ORDER BY version) FROM schema_version"
                ).fetchone()
                if list(recorded or []) == list(range(1, version + 1)):
                    return version
        newest = layout_of_version(_LEGACY_VERSIONS[-1])
        has_version_table = any(table == "schema_version" for _s, table, _c, _t in layout)
        what = "has a schema_version table but " if has_version_table else ""
        raise NotAStoreError(
            f"{self.path} is a DuckDB database but not a DepthScope one: it {what}carries no DepthScope "
            f"marker and its tables are not those of a DepthScope file ({_difference(layout, newest)}); "
            "it was left untouched. Pass another --db."
        )

    def _migrate_from(self, version: int) -> None:
        """Every pending migration in one transaction: the file is upgraded whole or not at all."""
        with self._cursor() as cur:
            cur.begin()
            try:
                _apply(cur, tuple(m for m in MIGRATIONS if m.version > version))
            except BaseException:
                cur.rollback()
                raise
            cur.commit()
