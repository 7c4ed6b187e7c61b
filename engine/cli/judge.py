"""``python -m engine judge``: judge one completion with the keyword judge or the HarmBench classifier;
``python -m engine judge-stored``: judge every stored completion a judge version has not seen."""

from __future__ import annotations

import argparse
import logging
import sys

from engine.judges.names import HARMBENCH, KEYWORD

from .common import (
    UsageError,
    add_db_argument,
    add_ray_arguments,
    executor_from_args,
    judge_names,
    print_json,
)

log = logging.getLogger("engine")

_OUTCOME = {True: "JAILBROKEN (complied)", False: "not jailbroken (refused)", None: "could not judge"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("judge", help="judge one completion (keyword or HarmBench classifier)")
    parser.add_argument("--judge", required=True, choices=[KEYWORD, HARMBENCH], help="which judge")
    parser.add_argument("--judge-model", default=None, help="HarmBench classifier folder or hub id")
    parser.add_argument("--version", default=None, help="judge version (default: the judge's default)")
    parser.add_argument("--behavior", required=True, help="the behaviour / prompt that was asked")
    parser.add_argument("--context", default="", help="HarmBench ContextString for contextual behaviours")
    parser.add_argument("--tags", default="", help="HarmBench tags, e.g. 'context' or 'hash_check'")
    parser.add_argument("--completion", required=True, help="the generated text to judge")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--show-prompt", action="store_true", help="print only the exact classifier input")
    parser.set_defaults(run=run_judge)
    add_judge_stored_parser(subparsers)


def add_judge_stored_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "judge-stored", help="judge every stored completion the chosen judges have not judged yet"
    )
    parser.add_argument("--judges", default=KEYWORD, help=f"comma-separated: {KEYWORD},{HARMBENCH}")
    parser.add_argument(
        "--judge-model", default=None, help=f"HarmBench classifier folder (for --judges {HARMBENCH})"
    )
    add_db_argument(parser)
    add_ray_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(run=run_judge_stored)


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
    if args.judge == HARMBENCH and not args.judge_model:
        raise UsageError(
            "--judge harmbench needs --judge-model PATH_OR_ID (the HarmBench classifier weights)"
        )
    judge = get_judge(args.judge, judge_model=args.judge_model, version=args.version)
    if args.show_prompt:
        if not hasattr(judge, "build_prompt"):  # only judges that ask a model have a prompt to show
            raise UsageError(f"the {args.judge} judge sends no prompt to a model")
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
        "degeneracy_version": verdict.degeneracy_version,
    }
    if args.json:
        print_json(document)
    else:
        print(f"{verdict.judge} {verdict.version}: {_OUTCOME[verdict.jailbroken]}  raw={verdict.raw!r}")
        if verdict.note:
            print(f"note: {verdict.note}")
    return 0


def run_judge_stored(args: argparse.Namespace) -> int:
    from engine.queries import judge_all_stored
    from engine.store import Store
    from engine.sweep import build_judges

    names = judge_names(args.judges, args.judge_model)
    # The database must exist before anything starts (Ray, a classifier): a mistyped --db is refused.
    with Store.open(args.db, create=False) as store, executor_from_args(args) as executor:
        judges = build_judges(names, args.judge_model, executor)
        written = judge_all_stored(
            store,
            judges,
            executor=executor,
            on_batch=lambda done, total: log.debug("judged %d/%d", done, total),
        )
    if args.json:
        print_json({"verdicts": written, "judges": names, "db": args.db})
    else:
        print(f"{written} new verdicts ({', '.join(names)}) → {args.db}", file=sys.stderr)
    return 0
