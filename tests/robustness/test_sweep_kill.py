"""A sweep process killed with SIGKILL mid-sweep loses no finished row, is marked interrupted when the
store is next opened, and resumes without duplicates."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine.models import load_model
from engine.store import Store
from engine.sweep import SweepSpec, run_sweep
from engine.types import GenerationParams

ROOT = Path(__file__).resolve().parents[2]
N_PROMPTS, LAYERS = 12, (8, 5, 2)


def write_prompts(path: Path) -> Path:
    rows = [f"p{i},Tell me something about topic number {i} please,harmful" for i in range(N_PROMPTS)]
    path.write_text("id,prompt,label\n" + "\n".join(rows) + "\n")
    return path


def sweep_args(model_dir: Path, prompts: Path, db: Path) -> list[str]:
    return [
        "sweep", "--model", str(model_dir), "--prompts", str(prompts), "--layers", ",".join(map(str, LAYERS)),
        "--max-new-tokens", "24", "--batch-rows", "3", "--db", str(db),
    ]  # fmt: skip


def rows_of(db: Path) -> list[tuple]:
    with Store.open(db, read_only=True) as store:
        return sorted((c.key, c.text, c.token_ids) for c in store.get_generations())


def test_sigkill_mid_sweep_then_resume_equals_uninterrupted(tiny_model_dir, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.csv")
    killed_db, whole_db = tmp_path / "killed.duckdb", tmp_path / "whole.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", *sweep_args(tiny_model_dir, prompts, killed_db)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    seen = bytearray()
    reader = threading.Thread(
        target=lambda: [seen.extend(chunk) for chunk in iter(lambda: process.stderr.read(64), b"")]
    )
    reader.start()
    total = N_PROMPTS * len(LAYERS)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            done = [int(n) for n in re.findall(rf"(\d+)/{total}", seen.decode(errors="replace"))]
            if done and 2 * len(LAYERS) <= max(done) < total - len(LAYERS):
                break
            time.sleep(0.02)
        assert process.poll() is None, "the sweep finished before it could be killed: make it longer"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)
    partial = rows_of(killed_db)
    assert 0 < len(partial) < total
    assert len({key for key, _text, _ids in partial}) == len(partial), "no duplicate rows"

    with Store.open(killed_db, read_only=True) as reader:
        assert reader.list_runs()["status"].tolist() == ["running"]  # SIGKILL gave it no chance to say so
    with Store.open(killed_db) as store:  # the next read-write open sees the process is gone
        runs = store.list_runs()
    assert runs["status"].tolist() == ["interrupted"] and runs["pid"].tolist() == [process.pid]

    loaded = load_model(str(tiny_model_dir))
    spec = SweepSpec(models=(str(tiny_model_dir),), prompt_set=str(prompts), layers=LAYERS,
                     params=GenerationParams(max_new_tokens=24), rows_per_batch=3)  # fmt: skip
    with Store.open(killed_db) as store:
        resumed = run_sweep(spec, store, load=lambda _name: loaded)
    assert resumed.cached == len(partial) and resumed.generated == total - len(partial)
    with Store.open(whole_db) as store:
        run_sweep(spec, store, load=lambda _name: loaded)
    assert rows_of(killed_db) == rows_of(whole_db)
    assert set(partial) <= set(rows_of(killed_db)), "finished rows survive unchanged"
