"""Ray scaling: the same sweep with 1 and with 2 workers, in one run, printing the ratio.

A random 8-layer Llama (hidden 256, like bench/sweep.py's cpu preset) is saved to a temporary folder
that every worker loads; each run writes its own temporary DuckDB, and the two runs' rows must be
identical. On CPU each worker gets one core (so 2 workers use two); with 2+ GPUs each worker gets
one GPU. Only the generation stage is timed (model loading in the actors is reported apart).

    python bench/scale.py [--prompts N] [--max-new-tokens N] [--chunk N] [--device cpu|cuda]

The last line is ``scale_2_vs_1: X`` (generation throughput with 2 workers over 1 worker).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from bench.sweep import bench_prompts  # noqa: E402
from engine.depths import DEFAULT_DEPTHS  # noqa: E402
from engine.executors.ray_executor import RayExecutor, connect  # noqa: E402
from engine.store import Store  # noqa: E402
from engine.sweep import SweepSpec, run_sweep  # noqa: E402
from engine.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402
from engine.types import GenerationParams  # noqa: E402


def save_model(folder: Path) -> Path:
    tokenizer = build_tiny_tokenizer(vocab_size=2000, corpus=bench_prompts(64) * 4)
    model = build_tiny_model("llama", n_layers=8, hidden_size=256, vocab_size=len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_prompts(path: Path, n: int) -> Path:
    lines = ["id,prompt,label"] + [f'p{i},"{text}",harmful' for i, text in enumerate(bench_prompts(n))]
    path.write_text("\n".join(lines) + "\n")
    return path


def timed_sweep(spec: SweepSpec, db: Path, executor: RayExecutor) -> tuple[float, float, int]:
    """(seconds loading, seconds generating, rows generated) of one sweep into a fresh database."""
    marks: dict[str, float] = {}

    def note(progress) -> None:
        marks.setdefault(progress.stage, time.perf_counter())

    began = time.perf_counter()
    with Store.open(db) as store:
        summary = run_sweep(spec, store, executor=executor, progress=note)
    return marks["generating"] - began, marks["judging"] - marks["generating"], summary.generated


def stored_rows(db: Path) -> set:
    with Store.open(db, read_only=True) as store:
        return {(c.key, c.token_ids) for c in store.get_generations()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=8, help="prompts per work unit")
    parser.add_argument("--device", default="cuda" if torch.cuda.device_count() >= 2 else "cpu")
    args = parser.parse_args()
    gpus = 1.0 if args.device == "cuda" else 0.0
    if gpus and torch.cuda.device_count() < 2:
        print("2 workers with one GPU each need 2 GPUs; use --device cpu")
        return 2
    connect("local", num_cpus=os.cpu_count(), log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(Path(tmp) / "model")
        spec = SweepSpec(
            models=(str(folder),),
            prompt_set=str(save_prompts(Path(tmp) / "prompts.csv", args.prompts)),
            depths=DEFAULT_DEPTHS,
            params=GenerationParams(max_new_tokens=args.max_new_tokens),
        )
        print(
            f"random Llama, 8 layers × 256, {args.device}; {args.prompts} prompts × depths % "
            f"{list(DEFAULT_DEPTHS)}, {args.max_new_tokens} new tokens, {args.chunk} prompts per unit; "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )
        seconds, rows = {}, {}
        for workers in (1, 2):
            executor = RayExecutor(
                workers=workers,
                gpus_per_worker=gpus,
                cpus_per_worker=1.0,
                prompts_per_chunk=args.chunk,
                load_kwargs={"device": args.device},
            )
            db = Path(tmp) / f"workers{workers}.duckdb"
            loading, seconds[workers], generated = timed_sweep(spec, db, executor)
            rows[workers] = stored_rows(db)
            print(
                f"{workers} worker(s): {generated} completions in {seconds[workers]:.2f} s "
                f"= {generated / seconds[workers]:.1f} completions/s "
                f"(actors started + loaded in {loading:.1f} s)"
            )
        identical = rows[1] == rows[2]
        print(f"identical rows: {identical} ({len(rows[1])} rows)")
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print(f"scale_2_vs_1: {seconds[1] / seconds[2]:.2f}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
