"""Train the tuned lens for a model on a prompt set and print held-out KL per layer, tuned vs raw.

    python bench/tuned_lens.py [--model smollm2-135m-instruct] [--prompts benign] [--steps 200]
        [--batch-tokens 16] [--generate-tokens 32] [--save]

Until the CLI grows ``python -m engine lens train`` this is the way to build data/lenses/<hash>.pt.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engine.datasets import load_prompt_set  # noqa: E402
from engine.lenses.training import save_lens  # noqa: E402
from engine.models import load_model  # noqa: E402
from engine.usecases import train_tuned_lens  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", default="benign")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-tokens", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--generate-tokens", type=int, default=32)
    parser.add_argument("--save", action="store_true", help="write data/lenses/<model hash>.pt and .json")
    args = parser.parse_args()
    began = time.perf_counter()
    loaded = load_model(args.model)
    texts = [p.text for p in load_prompt_set(args.prompts)]
    print(f"model {args.model} ({loaded.n_layers} layers, hash {loaded.info.model_hash}); {len(texts)} texts")

    def progress(stage: str, done: int, total: int, loss: float | None) -> None:
        if stage != "train" or done % 20 == 0 or done == total:
            shown = f" loss {loss:.3f}" if loss is not None else ""
            print(f"[{time.perf_counter() - began:6.1f} s] {stage} {done}/{total}{shown}", flush=True)

    trained = train_tuned_lens(
        loaded,
        texts,
        steps=args.steps,
        batch_tokens=args.batch_tokens,
        lr=args.lr,
        generate_tokens=args.generate_tokens,
        corpus=args.prompts,
        on_progress=progress,
    )
    report = trained.report
    print(f"train tokens {report['train_tokens']}, held-out tokens {report['heldout_tokens']}")
    print("layer  KL_raw  KL_tuned  (nats, held-out)")
    for k, (raw, tuned) in enumerate(zip(report["kl_raw"], report["kl_tuned"], strict=True), start=1):
        flag = "" if tuned < raw or k == loaded.n_layers else "  NOT BELOW RAW"
        print(f"{k:5d}  {raw:7.3f}  {tuned:7.3f}{flag}")
    below = all(t < r for t, r in zip(report["kl_tuned"][:-1], report["kl_raw"][:-1], strict=True))
    print(f"tuned_below_raw_at_every_layer_below_L: {below}")
    if args.save:
        print(f"saved {save_lens(trained)}")
    print(f"total {time.perf_counter() - began:.0f} s")
    return 0 if below else 1


if __name__ == "__main__":
    sys.exit(main())
