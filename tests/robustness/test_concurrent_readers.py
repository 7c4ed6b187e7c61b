"""While a CLI sweep writes the database in another process, ``report`` and the dashboard read it (the
rows stored so far), and SIGTERM stops the sweep like Ctrl-C: batch rolled back, run marked interrupted."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import child_env

from engine.store import Store
from tests.test_app_pages import (  # noqa: F401  (fixtures)
    app_env,
    markdowns,
    navigation_only,
    open_page,
    seeded,
    texts,
    tiny_hash,
)

ROOT = Path(__file__).resolve().parents[2]
# Far longer than the readers take, even on a loaded machine (the sweep is stopped long before its end).
N_PROMPTS, LAYERS = 1000, (8, 5, 2)
ENV = child_env()


def write_prompts(path: Path) -> Path:
    rows = [f"q{i},Write a short note about subject {i} for me,harmful" for i in range(N_PROMPTS)]
    path.write_text("id,prompt,label\n" + "\n".join(rows) + "\n")
    return path


class SweepProcess:
    """``python -m engine sweep`` in its own process, its stderr (progress bars) collected by a thread."""

    def __init__(self, model_dir: Path, prompts: Path, db: Path) -> None:
        args = [
            "sweep", "--model", str(model_dir), "--prompts", str(prompts),
            "--layers", ",".join(map(str, LAYERS)), "--max-new-tokens", "16", "--batch-rows", "3",
            "--db", str(db),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine", *args], cwd=ROOT, env=ENV,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.stderr = bytearray()
        self.reader = threading.Thread(target=self._collect)
        self.reader.start()

    def _collect(self) -> None:
        for chunk in iter(lambda: self.process.stderr.read(64), b""):
            self.stderr.extend(chunk)

    def rows_done(self) -> int:
        total = N_PROMPTS * len(LAYERS)
        done = re.findall(rf"(\d+)/{total}", self.stderr.decode(errors="replace"))
        return max((int(n) for n in done), default=0)

    def wait_for_rows(self, rows: int, limit_s: float = 480) -> None:
        deadline = time.monotonic() + limit_s
        while self.rows_done() < rows and self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.process.poll() is None, f"the sweep ended early: {self.stderr.decode(errors='replace')}"
        assert self.rows_done() >= rows, "the sweep made no progress"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=120)
        self.reader.join(timeout=60)


def generations(db: Path) -> list[tuple]:
    with Store.open(db, read_only=True) as store:
        return sorted((c.key, c.text, c.token_ids) for c in store.get_generations())


@pytest.mark.timeout(1200)
def test_report_and_dashboard_read_while_a_sweep_writes_then_sigterm(seeded, tiny_model_dir, tmp_path):  # noqa: F811
    db = seeded["db"]
    seeded_rows = generations(db)
    sweep = SweepProcess(tiny_model_dir, write_prompts(tmp_path / "many.csv"), db)
    try:
        sweep.wait_for_rows(2 * len(LAYERS))
        seen_before_report = sweep.rows_done()

        # `report` opens read-only, per query, waiting at most a few seconds for one batch's write.
        report = subprocess.run(
            [sys.executable, "-m", "engine", "report", "--db", str(db)],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=480,
        )  # fmt: skip
        assert report.returncode == 0, report.stderr
        stored = int(re.search(r"(\d+) completions stored", report.stdout).group(1))
        assert stored >= len(seeded_rows) + seen_before_report  # the sweep's rows so far, and the old ones
        assert "ASR" in report.stdout  # the seeded judged rows are reported

        # The dashboard reads the same file meanwhile: pages render the stored answers, no lock message.
        at = open_page("explorer")
        assert "I'm sorry, but I cannot help with that." in texts(at)
        at.switch_page("pages/sweep.py").run()
        assert not at.exception, [e.value for e in at.exception]
        assert not any("in use" in message for message in markdowns(at)), markdowns(at)

        assert sweep.process.poll() is None, "the sweep finished before the readers ran: make it longer"
        sweep.process.send_signal(signal.SIGTERM)
        code = sweep.process.wait(timeout=300)
        sweep.reader.join(timeout=60)
        assert code == 128 + signal.SIGTERM, sweep.stderr.decode(errors="replace")[-3000:]
    finally:
        sweep.stop()
    assert "terminated: finished batches are kept" in sweep.stderr.decode(errors="replace")

    after = generations(db)
    assert len({key for key, _text, _ids in after}) == len(after), "no duplicate rows"
    assert set(seeded_rows) <= set(after), "nothing stored before was lost"
    assert stored <= len(after) < len(seeded_rows) + N_PROMPTS * len(LAYERS)
    with Store.open(db, read_only=True) as reader:  # SIGTERM let the sweep say so itself
        runs = reader.list_runs()
    assert runs["status"].tolist() == ["interrupted"] and runs["finished_at"].notna().all()
