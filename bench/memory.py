"""Peak memory of a sweep versus the number of prompts: batches stream, rows are written as they finish.

    python bench/memory.py            # 100 vs 1000 prompts on a tiny random model, each in its own process

Prints the peak resident memory of each run and their ratio (≈ 1 means memory does not grow with prompts).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(n_prompts: int) -> None:
    from engine.models import from_objects
    from engine.store import Store
    from engine.sweep import SweepSpec, run_sweep
    from engine.tiny import build_tiny_model, build_tiny_tokenizer
    from engine.types import GenerationParams

    loaded = from_objects(build_tiny_model("llama", n_layers=4, hidden_size=128), build_tiny_tokenizer())
    with tempfile.TemporaryDirectory() as folder:
        csv = Path(folder) / "prompts.csv"
        rows = [f"p{i},Tell me about topic {i} and why it matters,harmful" for i in range(n_prompts)]
        csv.write_text("id,prompt,label\n" + "\n".join(rows) + "\n")
        spec = SweepSpec(models=("tiny",), prompt_set=str(csv), layers=(4, 2),
                         params=GenerationParams(max_new_tokens=4), rows_per_batch=64)  # fmt: skip
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with Store.open(Path(folder) / "db.duckdb") as store:
            summary = run_sweep(spec, store, load=lambda _name: loaded)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"prompts": n_prompts, "rows": summary.generated, "baseline_mb": baseline / 1024,
                      "peak_mb": peak / 1024}))  # fmt: skip


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return 0
    results = []
    for n in (100, 1000):
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True,
                             env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, check=True)  # fmt: skip
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        growth = r["peak_mb"] - r["baseline_mb"]
        print(f"{r['prompts']:>5} prompts, {r['rows']:>5} rows: peak RSS {r['peak_mb']:.0f} MB "
              f"(after loading: {r['baseline_mb']:.0f} MB, growth {growth:.0f} MB)")  # fmt: skip
    small, large = (r["peak_mb"] - r["baseline_mb"] for r in results)
    print(f"growth_ratio_1000_vs_100: {large / max(small, 1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
