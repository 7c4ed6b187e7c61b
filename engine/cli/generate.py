"""``python -m engine generate``: complete prompts at several truncation depths."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence

from engine.depths import depth_label

from .common import (
    add_depth_arguments,
    add_generation_arguments,
    add_model_arguments,
    generation_params,
    load_from_args,
    print_json,
    resolve_layers,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="complete prompts at several truncation depths")
    add_model_arguments(parser)
    add_depth_arguments(parser)
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for more)")
    add_generation_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON array on stdout")
    parser.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from engine.generation import generate

    params = generation_params(args)
    loaded = load_from_args(args)
    layers = resolve_layers(args, loaded.n_layers)
    completions = generate(loaded, args.prompt, layers, params, rows_per_batch=args.batch_rows)
    rows = [
        {
            "prompt": c.prompt_text,
            "layers": c.layers,
            "depth": round(loaded.info.depth_percent(c.layers), 4),
            "n_layers": loaded.n_layers,
            "completion": c.text,
            "token_ids": list(c.token_ids),
            "model": loaded.info.model_id,
            "model_hash": loaded.info.model_hash,
        }
        for c in completions
    ]
    if args.json:
        print_json(rows)
    else:
        print_side_by_side(rows)
    return 0


def print_side_by_side(rows: Sequence[dict], width: int = 100) -> None:
    """One block per prompt, one row per depth: readable in a terminal, model text shown verbatim."""
    current = None
    for row in rows:
        if row["prompt"] != current:
            current = row["prompt"]
            print("=" * width)
            print(textwrap.fill(f"PROMPT: {current}", width))
            print("-" * width)
        label = depth_label(row["layers"], row["n_layers"])
        body = textwrap.wrap(row["completion"].replace("\n", " ⏎ "), width - 26) or ["(empty)"]
        print(f"{label:<24}| {body[0]}")
        for line in body[1:]:
            print(f"{'':<24}| {line}")
