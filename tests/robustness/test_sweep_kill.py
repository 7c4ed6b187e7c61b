"""A sweep process killed with SIGKILL mid-sweep loses no finished row, is marked interrupted when the
store is next opened, and resumes without duplicates."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env

from engine.models import load_model
from engine.store import Store
from engine.sweep import SweepSpec, run_sweep
from engine.types import GenerationParams

ROOT = Path(__file__).resolve().parents[2]
N_PROMPTS, LAYERS = 6, (8, 5, 2)
NEW_TOKENS = 8


def write_prompts(path: Path) -> Path:
    rows = [f"p{i},Tell me something about topic number {i} please,harmful" for i in range(N_PROMPTS)]
    path.write_text("id,prompt,label\n" + "\n".join(rows) + "\n")
    return path


def sweep_args(model_dir: Path, prompts: Path, db: Path) -> list[str]:
    return [
        "sweep", "--model", str(model_dir), "--prompts", str(prompts), "--layers", ",".join(map(str, LAYERS)),
        "--max-new-tokens", str(NEW_TOKENS), "--batch-rows", "3", "--db", str(db),
    ]  # fmt: skip


def rows_of(db: Path) -> list[tuple]:
    with Store.open(db, read_only=True) as store:
        return sorted((c.key, c.text, c.token_ids) for c in store.get_generations())


# The real CLI sweep, stopped deterministically inside a write transaction: the generations of batch
# STALL_AT are inserted but not committed when it says so and sleeps. No timing decides where the kill
# lands, however loaded the machine is.
STALLING_SWEEP = """
import sys, time
from engine.cli import main
from engine.store import Store
stall_at = int(sys.argv[1])
original = Store._insert_new
batches = []
def stalling_insert(cur, table, rows, on_conflict="DO NOTHING"):
    written = original(cur, table, rows, on_conflict)
    if table == "generations":
        batches.append(written)
        if len(batches) == stall_at:
            print("stalled inside batch", stall_at, flush=True)
            time.sleep(3600)
    return written
Store._insert_new = staticmethod(stalling_insert)
sys.exit(main(sys.argv[2:]))
"""
STALL_AT = 3  # batches 1 and 2 committed, batch 3 in flight when killed
ROWS_PER_BATCH = len(LAYERS)  # --batch-rows 3: one prompt at its three depths


@pytest.mark.timeout(1800)  # three sweeps and two processes: an upper bound for a loaded machine
def test_sigkill_mid_sweep_then_resume_equals_uninterrupted(tiny_model_dir, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.csv")
    killed_db, whole_db = tmp_path / "killed.duckdb", tmp_path / "whole.duckdb"
    env = child_env()
    total = N_PROMPTS * len(LAYERS)
    log = (tmp_path / "sweep.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", STALLING_SWEEP, str(STALL_AT),
         *sweep_args(tiny_model_dir, prompts, killed_db)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()  # blocks until the sweep is inside batch STALL_AT's transaction
        said = (tmp_path / "sweep.log").read_text()[-3000:]
        assert line.strip() == f"stalled inside batch {STALL_AT}", said
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        log.close()
    partial = rows_of(killed_db)
    assert len(partial) == (STALL_AT - 1) * ROWS_PER_BATCH  # committed batches, not the one in flight
    assert len({key for key, _text, _ids in partial}) == len(partial), "no duplicate rows"

    with Store.open(killed_db, read_only=True) as reader:
        assert reader.list_runs()["status"].tolist() == ["running"]  # SIGKILL gave it no chance to say so
    with Store.open(killed_db) as store:  # the next read-write open sees the process is gone
        runs = store.list_runs()
    assert runs["status"].tolist() == ["interrupted"] and runs["pid"].tolist() == [process.pid]

    loaded = load_model(str(tiny_model_dir))
    spec = SweepSpec(models=(str(tiny_model_dir),), prompt_set=str(prompts), layers=LAYERS,
                     params=GenerationParams(max_new_tokens=NEW_TOKENS), rows_per_batch=3)  # fmt: skip
    with Store.open(killed_db) as store:
        resumed = run_sweep(spec, store, load=lambda _name: loaded)
    assert resumed.cached == len(partial) and resumed.generated == total - len(partial)
    with Store.open(whole_db) as store:
        run_sweep(spec, store, load=lambda _name: loaded)
    assert rows_of(killed_db) == rows_of(whole_db)
    assert set(partial) <= set(rows_of(killed_db)), "finished rows survive unchanged"
