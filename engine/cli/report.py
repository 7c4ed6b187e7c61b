"""``python -m engine report | export | label``: read results out of the database, add human labels."""

from __future__ import annotations

import argparse
import sys

from engine.depths import depth_label
from engine.judges.human import HUMAN_LABELS
from engine.judges.names import HUMAN

from .common import add_db_argument, print_json

_REPORT_FIELDS = (
    "model", "model_hash", "layers", "depth", "judge", "version", "n", "asr",
    "ci_low", "ci_high", "refusal_rate", "undecided", "degenerate",
)  # fmt: skip


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    label = subparsers.add_parser("label", help=f"store a human label for one completion (judge '{HUMAN}')")
    add_db_argument(label)
    label.add_argument("--completion-key", required=True, help="the completion_key column of an export")
    label.add_argument("--label", required=True, choices=list(HUMAN_LABELS))
    label.add_argument("--note", default="", help="optional free-text note")
    label.set_defaults(run=run_label)
    report = subparsers.add_parser("report", help="ASR per model × depth × judge with Wilson intervals")
    add_db_argument(report)
    report.add_argument("--judge", default=None, help="only this judge")
    report.add_argument("--json", action="store_true", help="print one JSON array on stdout")
    report.set_defaults(run=run_report)
    export = subparsers.add_parser("export", help="export generations + verdicts to CSV or Parquet")
    add_db_argument(export)
    export.add_argument(
        "--out", required=True, help="target file, .csv or .parquet (missing folders are created)"
    )
    export.add_argument(
        "--force", action="store_true", help="replace --out if it exists (never the database)"
    )
    export.set_defaults(run=run_export)


def run_report(args: argparse.Namespace) -> int:
    from engine.report import agreement_rows, asr_rows
    from engine.store import Store

    # Read-only, and only for each query: a sweep writing this file meanwhile just takes turns with us.
    with Store.open(args.db, read_only=True) as store:
        rows = asr_rows(store, judge=args.judge)
        agreements = agreement_rows(store) if not args.judge else []
        stored = store.table_counts()["generations"]
    if args.json:
        print_json([{name: getattr(r, name) for name in _REPORT_FIELDS} for r in rows])
        return 0
    print(f"{stored} completions stored in {args.db}")
    if not rows:
        print(f"no judged completions in {args.db} yet: run `python -m engine sweep` first (or wait for it)")
        return 0
    _print_asr_table(rows)
    _print_agreements(a for a in agreements if a.layers == 0)
    return 0


def _print_asr_table(rows) -> None:
    from engine.report import percent

    header = f"{'model':<28}{'depth':>22}  {'judge':<22}{'n':>5}{'ASR':>7}  {'95 % CI':<13}"
    print(f"{header}{'refusal':>8}{'degen.':>7}")
    for r in rows:
        print(
            f"{r.model[:27]:<28}{depth_label(r.layers, r.n_layers):>22}  {r.judge + ' ' + r.version:<22.22}"
            f"{r.n:>5}{percent(r.asr):>7}  {percent(r.ci_low) + '–' + percent(r.ci_high):<13}"
            f"{percent(r.refusal_rate):>8}{r.degenerate:>7}"
        )


def _print_agreements(agreements) -> None:
    for a in agreements:
        g = a.agreement
        kappa = "n/a" if g.kappa is None else f"{g.kappa:.2f}"
        inflation = "n/a" if g.inflation is None else f"{g.inflation:.2f}×"
        print(
            f"agreement {a.judge_a} vs {a.judge_b} ({a.model_hash}): n={g.n_decided} kappa={kappa} "
            f"inflation={inflation} McNemar p={g.mcnemar_p:.3g}"
        )


def run_export(args: argparse.Namespace) -> int:
    from engine.store import Store

    with Store.open(args.db, read_only=True) as store:
        path = store.export(args.out, overwrite=args.force)
    print(f"exported generations and verdicts to {path}", file=sys.stderr)
    return 0


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
