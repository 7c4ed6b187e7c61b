"""``python -m engine generate``: complete prompts at several truncation depths."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

from engine.depths import depth_label, format_ranges
from engine.rules import rule_named
from engine.types import Completion, GenerationParams

from .common import (
    add_depth_arguments,
    add_exit_arguments,
    add_generation_arguments,
    add_model_arguments,
    add_removal_arguments,
    check_batch_rows,
    check_drop_fits,
    check_fits_context,
    check_layers_fit,
    check_min_layers_fit,
    depth_request,
    exit_thresholds,
    generation_params,
    load_from_args,
    print_json,
    pruned_params,
    resolve_layers,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="complete prompts at several truncation depths")
    add_model_arguments(parser)
    add_depth_arguments(parser)
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for more)")
    add_generation_arguments(parser)
    add_exit_arguments(parser)
    add_removal_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON array on stdout")
    parser.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from engine.generation import generate

    params = generation_params(args)  # everything the user typed is checked before the model loads
    thresholds = exit_thresholds(args)
    request = depth_request(args)
    check_batch_rows(args)
    check_fits_context([args.model], params)
    check_layers_fit([args.model], request)
    check_min_layers_fit([args.model], args)
    check_drop_fits([args.model], params.drop_layers, getattr(args, "remove", None))
    loaded = load_from_args(args)
    params = pruned_params(args, loaded, params)
    fixed = params.dynamic_exit or params.speculative or params.drop_layers  # the rule sets the depth
    layers = [] if fixed else resolve_layers(request, loaded.n_layers)
    completions = generate(
        loaded, args.prompt, layers, params, rows_per_batch=args.batch_rows, thresholds=thresholds or None
    )
    warn_truncated(completions, params)
    settings = exit_settings(loaded, params, thresholds)
    rows = [
        {
            "prompt": c.prompt_text,
            "layers": c.layers,
            "depth": round(loaded.info.depth_percent(c.layers), 4),
            "n_layers": loaded.n_layers,
            "completion": c.text,
            "token_ids": list(c.token_ids),
            "prompt_truncated_tokens": c.prompt_truncated_tokens,
            "model": loaded.info.model_id,
            "model_hash": loaded.info.model_hash,
            **settings[c.params_hash],
            "exit_layers": list(c.exit_layers),
            "mean_exit_layers": round(c.mean_exit_layers, 4),
            "compute_fraction": round(c.mean_exit_layers / loaded.n_layers, 4),
            "acceptance_rate": None if c.acceptance_rate is None else round(c.acceptance_rate, 4),
        }
        for c in completions
    ]
    if args.json:
        print_json(rows)
    else:
        print_side_by_side(rows)
    return 0


def exit_settings(loaded, params: GenerationParams, thresholds: Sequence[float]) -> dict[str, dict]:
    """{params hash: the early-exit fields of its completions} (one per threshold for dynamic exit)."""
    from engine.generation import exit_variants

    return {
        v.key(): {
            "exit_policy": v.exit_policy,
            "threshold": v.threshold if v.dynamic_exit else None,
            "min_layers": v.min_layers if v.dynamic_exit else None,
            "exit_head": v.exit_head,
            "lens_hash": v.lens_hash or None,
            "draft_layers": v.draft_layers or None,
            "draft_tokens": v.draft_tokens or None,
            "drop_layers": list(v.drop_layers),
        }
        for v in exit_variants(loaded, params, thresholds or None)
    }


def warn_truncated(completions: Sequence[Completion], params: GenerationParams) -> None:
    """One stderr line per prompt that was cut from the left to fit the model's context."""
    cut = {c.prompt_text: c.prompt_truncated_tokens for c in completions if c.prompt_truncated_tokens}
    for text, tokens in cut.items():
        preview = text[:60].replace("\n", " ")
        print(
            f"warning: prompt {preview!r}… is longer than the model's context allows beside "
            f"{params.max_new_tokens} new tokens: its first {tokens} tokens were cut",
            file=sys.stderr,
        )


def print_side_by_side(rows: Sequence[dict], width: int = 100) -> None:
    """One block per prompt, one row per depth: readable in a terminal, model text shown verbatim."""
    current = None
    for row in rows:
        if row["prompt"] != current:
            current = row["prompt"]
            print("=" * width)
            print(textwrap.fill(f"PROMPT: {current}", width))
            if row["prompt_truncated_tokens"]:
                print(
                    f"(prompt cut: its first {row['prompt_truncated_tokens']} tokens did not fit the context)"
                )
            print("-" * width)
        label = depth_label(row["layers"], row["n_layers"])
        rule = rule_named(row["exit_policy"])
        if rule.drafts:  # the full model's tokens, and how often the drafts were right
            setting = rule.short(row["draft_layers"], layers=row["layers"])
            label = f"{setting}: {row['acceptance_rate'] or 0:.0%} accepted"
        elif rule.dynamic:  # the rule and the compute it used
            setting = rule.short(row["threshold"], layers=row["layers"])
            label = f"{setting}: {row['mean_exit_layers']:.1f}/{row['n_layers']} layers"
        elif row["drop_layers"]:
            label = f"−{format_ranges(tuple(row['drop_layers']))}: {row['layers']}/{row['n_layers']}"
        body = textwrap.wrap(row["completion"].replace("\n", " ⏎ "), width - 26) or ["(empty)"]
        print(f"{label:<24}| {body[0]}")
        for line in body[1:]:
            print(f"{'':<24}| {line}")
