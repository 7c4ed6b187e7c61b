"""Files that are not DepthScope databases are refused byte for byte untouched; old DepthScope files are
recognised by their exact layout and upgraded; runs whose process died are marked interrupted."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from engine.store import SCHEMA_VERSION, NotAStoreError, SchemaVersionError, Store
from engine.store.connection import utc_now
from engine.store.writes import STALE_RUN_AFTER
from tests.test_store import V1_SCHEMA

# Version 2 exactly as it shipped (no marker table): a frozen snapshot, independent of schema.py.
V2_SCHEMA = (
    *V1_SCHEMA,
    "CREATE TABLE probe_results (model_hash VARCHAR NOT NULL, set_id VARCHAR NOT NULL, "
    "layer INTEGER NOT NULL, kind VARCHAR NOT NULL, accuracy DOUBLE NOT NULL, accuracy_std DOUBLE, "
    "auroc DOUBLE, extra JSON NOT NULL, created_at TIMESTAMP NOT NULL, "
    "PRIMARY KEY (model_hash, set_id, layer, kind))",
    "ALTER TABLE generations ADD COLUMN run_id VARCHAR",
    "INSERT INTO schema_version VALUES (1, 'initial schema', now()::TIMESTAMP), "
    "(2, 'probe results; generations remember their run', now()::TIMESTAMP)",
)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_file(path: Path, statements: tuple[str, ...]) -> str:
    with duckdb.connect(str(path)) as con:
        for statement in statements:
            con.execute(statement)
    return digest(path)


FOREIGN_FILES = {
    "another app with a schema_version table": (
        "CREATE TABLE schema_version (version INTEGER)",
        "INSERT INTO schema_version VALUES (1)",
        "CREATE TABLE invoices (id INTEGER, total DOUBLE)",
    ),
    "only a schema_version table": ("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)",),
    "DepthScope's v2 tables plus one of its own": (*V2_SCHEMA, "CREATE TABLE notes (x VARCHAR)"),
    "DepthScope's v2 tables with a column changed": (
        *V2_SCHEMA,
        "ALTER TABLE runs ADD COLUMN owner VARCHAR",
    ),
    "DepthScope's v2 tables with one missing": (*V2_SCHEMA, "DROP TABLE probe_results"),
    "a view only": ("CREATE VIEW answer AS SELECT 42 AS x",),
    "a table in another schema": ("CREATE SCHEMA app", "CREATE TABLE app.schema_version (version INTEGER)"),
    "a marker naming another application": (
        *V2_SCHEMA,
        "CREATE TABLE depthscope_marker (application VARCHAR PRIMARY KEY)",
        "INSERT INTO depthscope_marker VALUES ('SomethingElse')",
    ),
}


@pytest.mark.parametrize("kind", list(FOREIGN_FILES))
def test_foreign_duckdb_file_is_refused_and_byte_identical(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "other-app.duckdb"
    before = make_file(path, FOREIGN_FILES[kind])
    for read_only in (False, True, False):
        with pytest.raises(NotAStoreError, match="not a DepthScope") as caught:
            Store.open(path, read_only=read_only)
        assert "left untouched" in str(caught.value)
        assert "transaction" not in str(caught.value)  # the real reason, not a side effect
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-app.duckdb"]  # no WAL either


def test_refusal_names_what_differs(tmp_path: Path) -> None:
    path = tmp_path / "other.duckdb"
    make_file(path, FOREIGN_FILES["another app with a schema_version table"])
    with pytest.raises(NotAStoreError, match="has a schema_version table but carries no DepthScope marker"):
        Store.open(path)
    with pytest.raises(NotAStoreError, match="other tables: invoices"):
        Store.open(path)


def test_version_2_file_is_recognised_migrated_and_marked(tmp_path: Path) -> None:
    path = tmp_path / "v2.duckdb"
    make_file(path, (*V2_SCHEMA, "INSERT INTO runs VALUES ('r1', now()::TIMESTAMP, NULL, '{}', 'done')"))
    with pytest.raises(SchemaVersionError, match="needs migrating"):
        Store.open(path, read_only=True)
    with Store.open(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.list_runs()[["run_id", "status"]].values.tolist() == [["r1", "done"]]
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT application FROM depthscope_marker").fetchall() == [("DepthScope",)]
    with Store.open(path, read_only=True) as reader:  # now recognised by its marker
        assert reader.schema_version == SCHEMA_VERSION


def test_version_2_file_with_a_wrong_version_history_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v2.duckdb"
    before = make_file(path, (*V2_SCHEMA, "DELETE FROM schema_version WHERE version = 1"))
    with pytest.raises(NotAStoreError, match="not a DepthScope"):
        Store.open(path)
    assert digest(path) == before


# ----------------------------------------------------------------------------------- stale runs
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def add_running_run(path: Path, run_id: str, pid: int | None, host: str | None, age: timedelta) -> None:
    seen = utc_now() - age
    with duckdb.connect(str(path)) as con:
        con.execute(
            "INSERT INTO runs (run_id, started_at, parameters, status, pid, host, heartbeat_at) "
            "VALUES (?, ?, '{}', 'running', ?, ?, ?)",
            [run_id, seen, pid, host, seen],
        )


def test_runs_of_dead_or_silent_processes_are_marked_interrupted(db_path: Path) -> None:
    Store.open(db_path).close()
    here, long_ago = socket.gethostname(), STALE_RUN_AFTER + timedelta(minutes=1)
    add_running_run(db_path, "dead-here", dead_pid(), here, timedelta(0))
    add_running_run(db_path, "alive-here", os.getpid(), here, timedelta(0))
    add_running_run(db_path, "silent-elsewhere", 4242, "another-host", long_ago)
    add_running_run(db_path, "recent-elsewhere", 4242, "another-host", timedelta(minutes=1))
    add_running_run(db_path, "old-without-pid", None, None, long_ago)

    with Store.open(db_path, read_only=True) as reader:  # readers never write
        assert set(reader.list_runs()["status"]) == {"running"}
    with Store.open(db_path) as store:
        status = dict(store.list_runs()[["run_id", "status"]].values.tolist())
    assert status == {
        "dead-here": "interrupted",
        "alive-here": "running",
        "silent-elsewhere": "interrupted",
        "recent-elsewhere": "running",
        "old-without-pid": "interrupted",
    }


def test_a_run_records_its_process_and_each_batch_is_a_heartbeat(db_path: Path) -> None:
    from tests.test_store import PROMPTS, completion

    with Store.open(db_path) as store:
        run_id = store.start_run({})
        first = store.list_runs()["heartbeat_at"].iloc[0]
        store.save_generations([completion(PROMPTS[0], 4)], run_id=run_id)
        runs = store.list_runs()
    assert runs[["pid", "host", "status"]].values.tolist() == [[os.getpid(), socket.gethostname(), "running"]]
    assert runs["heartbeat_at"].iloc[0] > first
