"""The schema as a list of migrations, and recognising (positively) a DepthScope database."""

from __future__ import annotations

from dataclasses import dataclass

from engine.store.connection import StoreConnection, translated, utc_now
from engine.store.errors import NotAStoreError, SchemaVersionError


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
    # One prompt text may be harmful in one set and benign in another (issue 14.6): the label a report
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
    # Issue 13.1: the full-depth model's NLL per completion (NULL until scored), and which incoherence
    # detector set each verdict's ``degenerate`` flag (NULL: one from before versions were recorded).
    Migration(
        5,
        "full-depth NLL per completion; the incoherence detector's version per verdict",
        (
            "ALTER TABLE generations ADD COLUMN full_depth_nll DOUBLE",
            "ALTER TABLE verdicts ADD COLUMN degeneracy_version VARCHAR",
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


class StoreSchema(StoreConnection):
    """Bring a freshly opened file to :data:`SCHEMA_VERSION`, or refuse it without changing it."""

    @translated("reading the schema")
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
                        [migration.version, migration.description, utc_now()],
                    )
                except BaseException:
                    cur.rollback()
                    raise
                cur.commit()
