"""Which 'running' runs are marked interrupted on the next read-write open: on this host the process
decides (alive and the same process: running, however long silent; dead, or its pid now another
process's: interrupted); on other hosts, an hour without a heartbeat."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

import engine.store.writes
from engine.store import Store
from engine.store.connection import utc_now
from engine.store.writes import STALE_RUN_AFTER, process_started

HERE = socket.gethostname()
LONG_AGO = STALE_RUN_AFTER + timedelta(minutes=1)
DEADLINE_S = 120.0  # generous: a loaded 2-core machine may take long to start a Python process


def add_running_run(path: Path, run_id: str, pid: int | None, host: str | None, age: timedelta,
                    started: str | None = None) -> None:  # fmt: skip
    seen = utc_now() - age
    with duckdb.connect(str(path)) as con:
        con.execute(
            "INSERT INTO runs (run_id, started_at, parameters, status, pid, host, heartbeat_at, "
            "process_started) VALUES (?, ?, '{}', 'running', ?, ?, ?, ?)",
            [run_id, seen, pid, host, seen, started],
        )


def statuses(path: Path) -> dict[str, str]:
    with Store.open(path) as store:  # read-write: this is when stale runs are marked
        return dict(store.list_runs()[["run_id", "status"]].values.tolist())


@pytest.fixture
def sleeper():
    """A live process of ours that is not this one (killed afterwards)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield child
    child.kill()
    child.wait()


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_live_process_on_this_host_keeps_its_run_however_long_silent(db_path, sleeper):
    Store.open(db_path).close()
    mine = process_started(os.getpid())
    for age in (timedelta(0), LONG_AGO, timedelta(days=3), timedelta(days=400)):
        add_running_run(db_path, f"me-{age}", os.getpid(), HERE, age, mine)
        add_running_run(db_path, f"me-no-start-time-{age}", os.getpid(), HERE, age)  # a run from before v10
        add_running_run(db_path, f"child-{age}", sleeper.pid, HERE, age, process_started(sleeper.pid))
    assert set(statuses(db_path).values()) == {"running"}


def test_a_dead_process_on_this_host_ends_its_run_at_once(db_path):
    Store.open(db_path).close()
    add_running_run(db_path, "dead-now", dead_pid(), HERE, timedelta(0))
    add_running_run(db_path, "dead-with-start-time", dead_pid(), HERE, timedelta(seconds=5), "boot:123")
    assert set(statuses(db_path).values()) == {"interrupted"}


@pytest.mark.skipif(process_started(os.getpid()) is None, reason="no /proc: the start time is not known here")
def test_a_reused_pid_does_not_keep_a_dead_run_alive(db_path, sleeper):
    """The run's process died and the system gave its pid to another process: the pid is alive, but it
    started at another time, so the run is interrupted at once (not an hour later)."""
    Store.open(db_path).close()
    theirs = process_started(sleeper.pid)
    boot, ticks = theirs.rsplit(":", 1)
    add_running_run(db_path, "earlier-process", sleeper.pid, HERE, timedelta(0), f"{boot}:{int(ticks) - 100}")
    add_running_run(db_path, "before-a-reboot", sleeper.pid, HERE, timedelta(0), f"another-boot:{ticks}")
    add_running_run(db_path, "this-one", sleeper.pid, HERE, timedelta(0), theirs)
    assert statuses(db_path) == {
        "earlier-process": "interrupted",
        "before-a-reboot": "interrupted",
        "this-one": "running",
    }


def test_without_start_times_the_pid_alone_decides(db_path, sleeper, monkeypatch, tmp_path):
    monkeypatch.setattr(engine.store.writes, "_PROC", tmp_path / "no-proc")  # e.g. macOS
    assert process_started(sleeper.pid) is None
    Store.open(db_path).close()
    add_running_run(db_path, "alive", sleeper.pid, HERE, LONG_AGO, "boot:1")
    add_running_run(db_path, "dead", dead_pid(), HERE, timedelta(0), "boot:1")
    assert statuses(db_path) == {"alive": "running", "dead": "interrupted"}


def test_other_hosts_are_judged_by_their_heartbeat(db_path, sleeper):
    Store.open(db_path).close()
    add_running_run(db_path, "silent", sleeper.pid, "another-host", LONG_AGO)  # a live pid here means nothing
    add_running_run(db_path, "silent-dead-pid", dead_pid(), "another-host", LONG_AGO)
    add_running_run(db_path, "recent", 4242, "another-host", timedelta(minutes=59))
    add_running_run(db_path, "recent-dead-pid", dead_pid(), "another-host", timedelta(minutes=1))
    add_running_run(db_path, "no-pid-silent", None, None, LONG_AGO)
    add_running_run(db_path, "no-pid-recent", None, HERE, timedelta(minutes=1))
    assert statuses(db_path) == {
        "silent": "interrupted",
        "silent-dead-pid": "interrupted",
        "recent": "running",
        "recent-dead-pid": "running",
        "no-pid-silent": "interrupted",
        "no-pid-recent": "running",
    }


def test_a_run_records_its_process_start_time(db_path):
    with Store.open(db_path) as store:
        store.start_run({})
    with duckdb.connect(str(db_path), read_only=True) as con:
        ((pid, started),) = con.execute("SELECT pid, process_started FROM runs").fetchall()
    assert pid == os.getpid() and started == process_started(os.getpid())


RUNNER = """
import sys, time
from engine.store import Store
with Store.open(sys.argv[1]) as store:
    run_id = store.start_run({"test": "silent"})
print(run_id, flush=True)
time.sleep(600)
"""


def test_a_real_silent_sweep_process_stays_running_until_it_dies(db_path):
    """Another process starts a run and falls silent; its heartbeat is aged past the hour. It stays
    'running' while the process lives, and is 'interrupted' once it is SIGKILLed."""
    child = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(db_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        run_id = child.stdout.readline().strip()  # blocks until the run is stored (no timing involved)
        assert run_id, "the child process did not start its run"
        with duckdb.connect(str(db_path)) as con:
            con.execute(
                "UPDATE runs SET heartbeat_at = ?, started_at = ?",
                [utc_now() - timedelta(days=2), utc_now() - timedelta(days=2)],
            )
        assert statuses(db_path) == {run_id: "running"}
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + DEADLINE_S  # the kernel reaps at once; the loop only guards slow hosts
    while statuses(db_path)[run_id] != "interrupted" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert statuses(db_path) == {run_id: "interrupted"}
