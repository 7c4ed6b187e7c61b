"""``python -m engine demo-model build|verify``: the known-answer demo model."""

from __future__ import annotations

import argparse
import json
import sys

from engine.demo_model import SCALES, build_demo_model
from engine.demo_verify import behaviour_problems, held_out_groups, verify_demo_model
from engine.modelfiles import peek_context_length
from engine.paths import DEMO_MODEL
from engine.types import GenerationParams

from .common import naming_option


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo-model", help="build or verify the known-answer demo model")
    actions = parser.add_subparsers(dest="demo_action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="train the demo model offline (a few minutes on CPU)")
    build.add_argument("--out", default=None, help="output folder (default: data/models/depthscope-demo)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument(
        "--scale", choices=sorted(SCALES), default="full", help="'test' builds a toy in seconds"
    )
    build.set_defaults(run=run_build)
    verify = actions.add_parser(
        "verify",
        help="sweep every depth (keyword judge + incoherence flag) on the demo set and held-out prompts; "
        "exit 1 unless refusal holds exactly in the refusal band (JSON)",
    )
    verify.add_argument("--model", default=DEMO_MODEL, help="the demo model's folder or name")
    verify.add_argument("--max-new-tokens", type=int, default=GenerationParams().max_new_tokens)
    verify.add_argument(
        "--all-held-out",
        action="store_true",
        help="also check the whole held-out split (HarmBench test, benign and generated prompts)",
    )
    verify.set_defaults(run=run_verify)


def run_build(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar_format = "{l_bar}{bar}| {elapsed}{postfix}"
    with tqdm(total=100, file=sys.stderr, bar_format=bar_format) as bar, logging_redirect_tqdm():

        def progress(fraction: float, message: str) -> None:
            bar.n = round(100 * fraction, 1)
            bar.set_postfix_str(message, refresh=True)

        out = build_demo_model(args.out, seed=args.seed, progress=progress, scale=args.scale)
    print(out)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    with naming_option("--max-new-tokens"):  # checked before the model loads
        GenerationParams(max_new_tokens=args.max_new_tokens).check_fits(peek_context_length(args.model))
    groups = held_out_groups(everything=args.all_held_out)
    report = verify_demo_model(args.model, groups, max_new_tokens=args.max_new_tokens)
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    problems = behaviour_problems(report)
    for problem in problems:
        print(f"not as built: {problem}", file=sys.stderr)
    return 1 if problems else 0
