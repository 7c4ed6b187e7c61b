"""What opening the database per call costs: batches written with the file held open vs opened per call.

    python bench/store_turns.py [BATCHES] [ROWS_PER_BATCH]   # default 40 batches of 24 rows

A sweep holds the file only while it writes one batch, so other processes can read it in between
(README, "Sweeps"). This times the store alone (no model: on a shared CPU the model's time is noisy):
writing batches held open vs opened per call, and one read (open read-only, count, close).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def batch(number: int, rows: int):
    from engine.types import Completion

    return [
        Completion(
            "m", f"p{number}-{i}", f"prompt {number} {i} " + "x" * 200, 3, "h", "y" * 400, tuple(range(64))
        )
        for i in range(rows)
    ]


def main(batches: int = 40, rows: int = 24) -> None:
    from engine.store import Store

    with tempfile.TemporaryDirectory() as folder:
        per_batch = {}
        for keep_open in (True, False):
            with Store.open(Path(folder) / f"held-{keep_open}.duckdb", keep_open=keep_open) as store:
                run_id = store.start_run({})
                began = time.perf_counter()
                for number in range(batches):
                    store.save_generations(batch(number, rows), run_id=run_id)
                per_batch[keep_open] = (time.perf_counter() - began) / batches
        with Store.open(Path(folder) / "held-False.duckdb", read_only=True) as reader:
            began = time.perf_counter()
            for _ in range(batches):
                assert reader.table_counts()["generations"] == batches * rows
            read = (time.perf_counter() - began) / batches
    held, opened = 1000 * per_batch[True], 1000 * per_batch[False]
    print(
        f"{batches} batches × {rows} rows: {held:.0f} ms per batch held open, "
        f"{opened:.0f} ms opened per call "
        f"(+{opened - held:.0f} ms); a read opened per call {1000 * read:.0f} ms"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
