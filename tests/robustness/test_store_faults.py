"""The store under real faults: another process holding the lock, and a writer killed mid-batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest
from conftest import child_env

from engine.store import SCHEMA_VERSION, Store, StoreLockedError

REPO_ROOT = Path(__file__).resolve().parents[2]
# Upper bounds only, generous for a loaded 2-core machine (a helper process imports DuckDB and pandas).
TEST_LIMIT_S = 300
WAIT_S = 120

# Opens the store in the mode given by argv[2], keeping the file open, says so, then waits to be killed.
HOLD_STORE = """
import sys, time
from engine.store import Store
store = Store.open(sys.argv[1], read_only=sys.argv[2] == "read-only", keep_open=True)
print("holding", flush=True)
time.sleep(float(sys.argv[3]))
store.close()
"""

# Writes batches forever; each batch repeats the previous one's rows, so a retry must insert nothing
# new from them. Prints the batch number once its transaction has committed.
WRITE_BATCHES = """
import sys
from engine.store import Store
from engine.types import Completion
BATCH = int(sys.argv[2])
store = Store.open(sys.argv[1])
previous = []
batch = 0
while True:
    rows = [Completion("m", f"b{batch}", f"batch {batch} prompt {i} " + "x" * 200, 3, "p", "y" * 300,
                       tuple(range(64)), 0.1) for i in range(BATCH)]
    new = store.save_generations(rows + previous)
    assert new == BATCH, new
    print(batch, flush=True)
    previous = rows
    batch += 1
"""


# Commits whole prompt-set batches, then stalls inside the next batch's transaction after two of its
# three inserts (prompt_sets and prompts written, members not yet), and waits there to be killed.
STALL_IN_TRANSACTION = """
import sys, time
from engine.store import Store
from engine.types import Prompt
store = Store.open(sys.argv[1])
def prompts(batch):
    return [Prompt(f"b{batch}-{i}", f"batch {batch} prompt {i}") for i in range(50)]
for batch in range(3):
    store.save_prompt_set(f"set{batch}", prompts(batch))
original_insert = Store._insert_new
calls = []
def stalling_insert(cur, table, rows, on_conflict="DO NOTHING"):
    written = original_insert(cur, table, rows, on_conflict)
    calls.append(table)
    if len(calls) == 2:
        print("stalled after", ",".join(calls), flush=True)
        time.sleep(60)
    return written
Store._insert_new = staticmethod(stalling_insert)
store.save_prompt_set("set3", prompts(3))
"""


@contextmanager
def running(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A helper process running ``script``; killed (if still alive) and reaped when the block ends."""
    env = child_env()
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        stop(process)


@contextmanager
def holding(db_path: Path, mode: str, seconds: str) -> Iterator[subprocess.Popen[str]]:
    """Another process with the store open in ``mode`` for ``seconds``, once it says it holds it."""
    with running(HOLD_STORE, str(db_path), mode, seconds) as holder:
        assert wait_for_line(holder) == "holding"
        yield holder


def wait_for_line(process: subprocess.Popen[str]) -> str:
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=WAIT_S)
        pytest.fail(f"helper process died: {process.stderr.read()}")
    return line.strip()


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=WAIT_S)
    process.stdout.close()
    process.stderr.close()


@pytest.mark.timeout(TEST_LIMIT_S)
def test_writer_in_another_process_gives_a_clear_lock_error(db_path: Path) -> None:
    Store.open(db_path).close()
    with holding(db_path, "read-write", "3600") as holder:  # killed when the block ends
        for read_only in (False, True):
            with pytest.raises(StoreLockedError) as caught:
                Store.open(db_path, read_only=read_only, lock_timeout_s=0)
            message = str(caught.value)
            assert f"database {db_path} is in use by another DepthScope process (pid {holder.pid})" in message
            assert "another --db" in message
            assert caught.value.pid == holder.pid and caught.value.path == db_path
    with Store.open(db_path) as store:  # the lock dies with its process
        assert store.schema_version == SCHEMA_VERSION


@pytest.mark.timeout(TEST_LIMIT_S)
def test_readers_share_the_file_and_a_writer_is_told_to_read_only(db_path: Path) -> None:
    Store.open(db_path).close()
    with holding(db_path, "read-only", "3600"):
        with Store.open(db_path, read_only=True) as second_reader:
            assert second_reader.table_counts()["generations"] == 0
        with pytest.raises(StoreLockedError, match="open it read-only too"):
            Store.open(db_path, lock_timeout_s=0)


@pytest.mark.timeout(TEST_LIMIT_S)
def test_lock_timeout_waits_for_the_other_process_to_close(db_path: Path) -> None:
    Store.open(db_path).close()
    with holding(db_path, "read-write", "1.0") as holder:
        with Store.open(db_path, lock_timeout_s=WAIT_S) as store:
            assert store.schema_version == SCHEMA_VERSION
        assert holder.wait(timeout=WAIT_S) == 0


@pytest.mark.timeout(TEST_LIMIT_S)
def test_writer_killed_inside_a_transaction_leaves_none_of_that_batch(db_path: Path) -> None:
    with running(STALL_IN_TRANSACTION, str(db_path)) as writer:
        assert wait_for_line(writer) == "stalled after prompt_sets,prompts"
        os.kill(writer.pid, signal.SIGKILL)
    assert writer.returncode == -signal.SIGKILL

    with Store.open(db_path) as store:
        assert [s.name for s in store.list_prompt_sets()] == ["set0", "set1", "set2"]
        counts = store.table_counts()
        assert (counts["prompts"], counts["prompt_set_members"]) == (150, 150)
        assert [p.prompt_id for p in store.get_prompts(store.list_prompt_sets()[2].set_id)][:2] == [
            "b2-0",
            "b2-1",
        ]


@pytest.mark.timeout(TEST_LIMIT_S)
def test_writer_killed_at_any_moment_leaves_only_whole_batches(db_path: Path) -> None:
    batch_size = 400
    with running(WRITE_BATCHES, str(db_path), str(batch_size)) as writer:
        committed = [int(wait_for_line(writer)) for _ in range(4)]
        time.sleep(0.03)  # the writer is now somewhere inside a later batch
        os.kill(writer.pid, signal.SIGKILL)
    assert writer.returncode == -signal.SIGKILL

    with Store.open(db_path) as store:  # replays DuckDB's write-ahead log, must not fail
        assert store.schema_version == SCHEMA_VERSION
    with duckdb.connect(str(db_path), read_only=True) as con:
        total, distinct = con.execute(
            "SELECT count(*), count(DISTINCT completion_key) FROM generations"
        ).fetchone()
        per_batch = dict(
            con.execute("SELECT prompt_id, count(*) FROM generations GROUP BY prompt_id").fetchall()
        )

    assert total == distinct
    assert set(per_batch.values()) == {batch_size}, per_batch  # whole batches only
    stored = sorted(int(name[1:]) for name in per_batch)
    assert stored == list(range(len(stored)))  # no gaps: batches commit in order
    assert stored[: len(committed)] == committed  # everything reported as committed survived
