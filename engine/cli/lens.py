"""``python -m engine lens train``: train a model's tuned lens (the ``tuned`` exit head) and save it."""

from __future__ import annotations

import argparse
import sys

from .common import UsageError, add_model_arguments, print_json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("lens", help="train a model's tuned lens (the tuned exit head)")
    actions = parser.add_subparsers(dest="lens_action", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="fit one affine translator per layer to the final layer (KL on benign text) and save it "
        "under data/lenses/<model hash>",
    )
    add_model_arguments(train)
    train.add_argument(
        "--prompts", default="benign", help="a built-in set name or a CSV path (default benign)"
    )
    train.add_argument("--limit", type=int, default=None, help="only the first N prompts of the set")
    # Defaults live in engine.lenses.training (a torch module): None here means "the engine's default".
    train.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the engine's, 300)")
    train.add_argument("--batch-tokens", type=int, default=None, help="token states per step (default 32)")
    train.add_argument(
        "--generate-tokens", type=int, default=None, help="answer tokens generated per prompt (default 48)"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--json", action="store_true", help="print the lens report (the sidecar) as JSON")
    train.set_defaults(run=run_train)


def _check_counts(args: argparse.Namespace) -> None:
    for option in ("steps", "batch_tokens", "generate_tokens", "limit"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise UsageError(f"--{option.replace('_', '-')}: {value} is not a whole number ≥ 1")


def run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.datasets import load_prompt_set

    _check_counts(args)
    prompts = load_prompt_set(args.prompts, limit=args.limit)  # a bad set name fails before the model loads
    if len(prompts) < 2:
        raise UsageError(f"--prompts: {args.prompts} has {len(prompts)} prompt(s); a lens needs at least 2")

    from engine.lenses.training import save_lens
    from engine.usecases import train_tuned_lens

    from .common import load_from_args

    loaded = load_from_args(args)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int, loss: float | None) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = tqdm(total=total, desc=f"lens {stage}", file=sys.stderr, unit="step")
        bar = bars[stage]
        if loss is not None:
            bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
        bar.update(done - bar.n)

    options = {
        name: getattr(args, name)
        for name in ("steps", "batch_tokens", "generate_tokens")
        if getattr(args, name) is not None
    }
    try:
        trained = train_tuned_lens(
            loaded,
            [p.text for p in prompts],
            seed=args.seed,
            corpus=args.prompts,
            on_progress=progress,
            **options,
        )
    finally:
        for bar in bars.values():
            bar.close()
    path = save_lens(trained)
    report = trained.report
    if args.json:
        print_json(report)
        return 0
    print(f"tuned lens for {loaded.info.model_id} (hash {report['model_hash']}) → {path}")
    print(f"lens hash {report['lens_hash']}; held-out KL (nats per token), raw head → tuned head:")
    for k, (raw, tuned) in enumerate(zip(report["kl_raw"], report["kl_tuned"], strict=True), start=1):
        print(f"  layer {k:3d}: {raw:8.3f} → {tuned:8.3f}")
    return 0
