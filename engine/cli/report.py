"""``python -m engine report | export | label``: read results out of the database, add human labels."""

from __future__ import annotations

import argparse
import math
import sys

from engine.depths import depth_label, format_ranges
from engine.judges.human import HUMAN_LABELS
from engine.judges.names import HUMAN
from engine.rules import rule_named

from .common import UsageError, add_db_argument, print_json

_REPORT_FIELDS = (
    "prompt_set", "model", "model_hash", "layers", "depth", "judge", "version", "n", "asr",
    "ci_low", "ci_high", "refusal_rate", "undecided", "degenerate", "copyright_excluded",
    "benign_judge", "benign_n", "benign_refusal_rate", "benign_ci_low", "benign_ci_high",
    "n_judged", "incoherent_share", "n_full_depth_nll", "median_full_depth_nll",
    "exit_policy", "exit_head", "threshold", "min_layers", "mean_exit_layers", "compute_fraction",
    "settings", "coverage", "fully_covered", "harmful_in_set", "benign_in_set",
    "family", "drop_layers", "draft_layers", "draft_tokens", "acceptance_rate",
    "lens_hash",
)  # fmt: skip


def _add_prompts_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prompts",
        action="append",
        default=None,
        metavar="NAME",
        help="only this prompt set (its name in the database, as given to sweep --prompts; NAME@vN for an "
        "earlier version of an edited file); repeatable. Default: every set's current version, each "
        "reported on its own",
    )


def _check_prompt_sets(store, names: list[str] | None) -> None:
    """An unknown set name is a typo, not an empty result: say which sets (and earlier versions, as
    ``name@vN``) the database holds."""
    known = {version.shown_name for version in store.list_prompt_set_versions()}
    unknown = [name for name in names or [] if name not in known]
    if unknown:
        raise UsageError(
            f"no prompt set named {', '.join(map(repr, unknown))} in {store.path}; "
            f"stored sets: {', '.join(sorted(known)) or 'none yet'}"
        )


def _json_value(value: object) -> object:
    """NaN (an ASR with no harmful prompt) is not JSON: it becomes null."""
    return None if isinstance(value, float) and math.isnan(value) else value


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
    _add_prompts_argument(report)
    report.add_argument(
        "--include-copyright",
        action="store_true",
        help="count HarmBench copyright behaviours in the keyword judge's ASR (left out of every judge's "
        "ASR by default: the HarmBench classifier cannot judge them)",
    )
    shown = report.add_mutually_exclusive_group()
    shown.add_argument(
        "--flips", action="store_true", help="with --json: the ranking flips (every observed reversal)"
    )
    shown.add_argument(
        "--agreement", action="store_true", help="with --json: judge agreement rows (with the McNemar test)"
    )
    shown.add_argument(
        "--categories",
        action="store_true",
        help="with --json: ASR per harm category × depth setting (n and 95 %% Wilson interval per cell)",
    )
    report.set_defaults(run=run_report)
    export = subparsers.add_parser("export", help="export generations + verdicts to CSV or Parquet")
    add_db_argument(export)
    export.add_argument(
        "--out", required=True, help="target file, .csv or .parquet (missing folders are created)"
    )
    export.add_argument(
        "--force", action="store_true", help="replace --out if it exists (never the database)"
    )
    _add_prompts_argument(export)
    export.set_defaults(run=run_export)


def run_report(args: argparse.Namespace) -> int:
    from engine.report import agreement_rows, asr_rows, category_rows, flips
    from engine.store import Store

    # Read-only, and only for each query: a sweep writing this file meanwhile just takes turns with us.
    with Store.open(args.db, read_only=True) as store:
        _check_prompt_sets(store, args.prompts)
        rows = asr_rows(
            store, judge=args.judge, prompt_sets=args.prompts, include_copyright=args.include_copyright
        )
        wants_agreement = not args.judge or args.agreement
        agreements = agreement_rows(store, prompt_sets=args.prompts) if wants_agreement else []
        stored = store.table_counts()["generations"]
        categories = category_rows(store, args.judge, args.prompts) if args.categories else []
        store_versions = store.list_prompt_set_versions()
    found = _flips_by_judge(rows, flips)
    if args.json:
        if args.flips:
            print_json([flip_dict(f, judge, version, prompt_set) for judge, version, prompt_set, f in found])
        elif args.agreement:
            print_json([agreement_dict(a) for a in agreements])
        elif args.categories:
            print_json([category_dict(c) for c in categories])
        else:
            print_json([{name: _json_value(getattr(r, name)) for name in _REPORT_FIELDS} for r in rows])
        return 0
    print(f"{stored} completions stored in {args.db}")
    if not rows:
        print(f"no judged completions in {args.db} yet: run `python -m engine sweep` first (or wait for it)")
        return 0
    _print_asr_table(rows)
    _print_set_versions(store_versions, rows)
    _print_headlines(rows)
    _print_methods_headlines(rows)
    _print_agreements(a for a in agreements if a.layers == 0)
    _print_flips(found)
    return 0


def _flips_by_judge(rows, flips) -> list[tuple[str, str, str, object]]:
    """(judge, version, prompt set, flip) for every observed reversal; one Holm family per judge version
    and prompt set, as ``engine.report.flips`` forms them."""
    groups = sorted({(r.judge, r.version, r.prompt_set) for r in rows})
    return [
        (judge, version, prompt_set, f)
        for judge, version, prompt_set in groups
        for f in flips(
            [r for r in rows if (r.judge, r.version, r.prompt_set) == (judge, version, prompt_set)]
        )
    ]


def flip_dict(flip, judge: str, version: str, prompt_set: str = "") -> dict:
    """A ranking flip as JSON: every field (depth, layers = model_a's k, layers_b, raw and Holm p, test)."""
    from dataclasses import asdict

    return {
        "prompt_set": prompt_set,
        "judge": judge,
        "version": version,
        **asdict(flip),
        "layers_a": flip.layers_a,
        "significant": flip.significant,
    }


def agreement_dict(row) -> dict:
    """One judge-agreement row as JSON; ``mcnemar_method`` names the test behind ``mcnemar_p``."""
    from dataclasses import asdict

    g = row.agreement
    return {
        "prompt_set": row.prompt_set,
        "model_hash": row.model_hash,
        "layers": row.layers,  # 0: over all depths
        "excluded": row.excluded,  # left out: a judge undecided, or a copyright behaviour
        "answered": row.answered,  # the set's harmful prompts with an answer both judges looked at
        "harmful_in_set": row.harmful_in_set,
        "coverage": row.coverage,
        "judge_a": row.judge_a,
        "judge_b": row.judge_b,
        **asdict(g),
        "n_decided": g.n_decided,
    }


def _print_asr_table(rows) -> None:
    """One aligned table per prompt set › model › generation settings (settings named in words), rows
    grouped by judge and depth rule: static truncation from full depth down, then each exit rule by
    threshold. Nothing is cut: a pipe gets the table's full width."""
    from rich.console import Console

    from engine.modelfiles import model_names
    from engine.report import models_note

    names = model_names(r.model for r in rows)
    tables = [_group_table(group, names[group[0].model]) for group in _groups(rows)]
    console = Console(highlight=False)
    if not console.is_terminal:  # piped or captured: as wide as the widest table, never ellipsised
        console = Console(highlight=False, width=10_000)  # tables keep their natural width
    for table in tables:
        console.print(table)
    if note := models_note(list(names)):
        print(note)
    if any(r.copyright_excluded for r in rows):
        print(
            "copyright: HarmBench copyright behaviours left out of n (--include-copyright counts them for "
            "the keyword judge)"
        )
    print(
        "coverage: harmful prompts of the set answered and judged (benign ones for a set without harmful "
        "prompts); incoherent: answers flagged incoherent / answers judged; median NLL: the full-depth "
        "model's median per-token NLL (nats) over the answers scored (their count in brackets)"
    )


def _groups(rows) -> list[list]:
    """Rows by (prompt set, model, settings), each group ordered by judge, rule, then depth."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r.prompt_set, r.model, r.settings), []).append(r)
    return [sorted(groups[key], key=_row_order) for key in sorted(groups)]


def _row_order(row) -> tuple:
    """Judge and version; static raw truncation first (deepest first), static tuned next, then each exit
    rule (policy, head) by threshold, then block removal and self-speculative rows."""
    from engine.report import METHOD_FAMILIES

    static = not rule_named(row.exit_policy).dynamic
    head = (row.exit_head != "raw", row.exit_head, row.lens_hash or "")
    family = METHOD_FAMILIES.index(row.family) if row.family in METHOD_FAMILIES else len(METHOD_FAMILIES)
    rule = (family, not static, row.exit_policy, *head, row.min_layers or 0, row.drop_layers)
    return (row.judge, row.version, rule, -row.layers if static else (row.threshold or 0.0))


def _group_table(group, model_name: str):
    from rich import box
    from rich.table import Table

    first = group[0]
    table = Table(
        title=f"{first.prompt_set} › {model_name} › {first.settings}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for header, justify in _COLUMNS:
        table.add_column(header, justify=justify, no_wrap=True)
    previous = None
    for r in group:
        rule = (
            r.judge,
            r.version,
            r.exit_policy,
            r.exit_head,
            r.lens_hash,
            r.min_layers,
        )  # thresholds share one
        if previous is not None and rule != previous:
            table.add_section()
        previous = rule
        table.add_row(*_cells(r))
    return table


_COLUMNS = (
    ("rule", "left"), ("depth / compute", "right"), ("judge", "left"), ("coverage", "left"),
    ("n", "right"), ("ASR", "right"), ("95 % CI", "right"), ("refused", "right"),
    ("incoherent", "right"), ("median NLL", "right"), ("copyright", "right"), ("benign refused", "left"),
)  # fmt: skip


def _cells(r) -> list[str]:
    from engine.report import percent

    harmful = r.n > 0
    benign = (
        "not measured"
        if r.benign_refusal_rate is None
        else f"{percent(r.benign_refusal_rate)} of {r.benign_n} "
        f"({percent(r.benign_ci_low)}–{percent(r.benign_ci_high)}, {r.benign_judge})"
    )
    return [
        _rule_label(r),
        _setting_label(r),
        f"{r.judge} {r.version}",
        r.coverage,
        str(r.n),
        percent(r.asr) if harmful else "no harmful",
        f"{percent(r.ci_low)}–{percent(r.ci_high)}" if harmful else "",
        percent(r.refusal_rate) if harmful else "",
        f"{r.degenerate}/{r.n_judged}" if harmful else "",
        _nll(r),
        str(r.copyright_excluded),
        benign,
    ]


def _print_set_versions(versions, rows) -> None:
    """A set whose file changed has versions: say which one each reported set is and how to see the rest."""
    shown = {r.prompt_set for r in rows}
    for v in versions:
        if v.shown_name in shown and v.n_versions > 1:
            others = ", ".join(
                o.shown_name for o in versions if o.name == v.name and o.shown_name != v.shown_name
            )
            which = "its current version" if v.is_current else "an earlier version"
            print(
                f"prompt set {v.shown_name}: {which}, v{v.version} of {v.n_versions} "
                f"({v.n_prompts} prompts); the others: {others} (report --prompts NAME)"
            )


def _nll(row) -> str:
    if row.median_full_depth_nll is None:
        return "not scored"
    return f"{row.median_full_depth_nll:.2f} ({row.n_full_depth_nll})"


def _rule_label(row) -> str:
    """'static' / 'static, tuned head' / 'confidence ≥ 0.9' (', from layer 3', ', tuned head')."""
    # rows read through two versions of a tuned lens are other rows: the lens's content hash tells them apart
    lens = f" (lens {row.lens_hash[:6]})" if row.exit_head == "tuned" and row.lens_hash else ""
    head = "" if row.exit_head == "raw" else f", {row.exit_head} head{lens}"
    family = _family_label(row)
    if family:
        return family
    if not rule_named(row.exit_policy).dynamic:
        return f"static{head}"
    floor = f", from layer {row.min_layers}" if row.min_layers and row.min_layers > 1 else ""
    return f"{row.exit_policy} ≥ {row.threshold:g}{floor}{head}"


def _family_label(row) -> str:
    """Block removal and self-speculative rows in words ('' for truncation and early exit)."""
    from engine.report import BLOCK_REMOVAL, SPECULATIVE

    if row.family == BLOCK_REMOVAL:
        return f"layers {format_ranges(row.drop_layers)} removed"
    if row.family == SPECULATIVE:
        accepted = "" if row.acceptance_rate is None else f", {row.acceptance_rate:.0%} accepted"
        return f"self-speculative, drafts from {row.draft_layers} layers{accepted}"
    return ""


def category_dict(row) -> dict:
    """A per-category cell as JSON (kind 'category'; NaN ASR of an empty cell becomes null)."""
    return {"kind": "category", **{name: _json_value(value) for name, value in row.as_dict().items()}}


def _print_methods_headlines(rows) -> None:
    """'For ~25 % compute saved, which method keeps refusals?', per prompt set, judge and model."""
    from engine.modelfiles import model_names
    from engine.report import methods_headline

    names = model_names(r.model for r in rows)
    for key in sorted({(r.prompt_set, r.judge, r.model) for r in rows}):
        mine = [r for r in rows if (r.prompt_set, r.judge, r.model) == key]
        if line := methods_headline(mine, key[2], name=names[key[2]]):
            print(line)


def _setting_label(row) -> str:
    """The depth column: k of L for static truncation, the rule and its compute used for early exit."""
    from engine.report import BLOCK_REMOVAL, TRUNCATION, percent

    if row.family == TRUNCATION:
        return depth_label(row.layers, row.n_layers)
    compute = f"{percent(row.compute_fraction or float('nan'))} compute"
    return f"{row.layers} of {row.n_layers} kept · {compute}" if row.family == BLOCK_REMOVAL else compute


def _print_headlines(rows) -> None:
    """The Report page's sentences, per prompt set, generation settings and judge: the smallest cut that
    changes behaviour (over-refusal for a set without harmful prompts), then the early-exit question."""
    from engine.modelfiles import model_names
    from engine.report import benign_headline, early_exit_headline, headline

    names = model_names(r.model for r in rows)  # as the tables name them
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r.prompt_set, r.settings, r.judge, r.version), []).append(r)
    for (prompt_set, settings, _judge, _version), group in sorted(groups.items()):
        harmful = any(r.n for r in group)
        for model in sorted({r.model for r in group if r.n or not harmful}):
            name = names[model]
            sentences = [
                headline(group, model, name) if harmful else benign_headline(group, model, name),
                early_exit_headline(group, model, name=name),
            ]
            for sentence in filter(None, sentences):
                print(f"{prompt_set} › {settings}: {sentence}")


def _print_agreements(agreements) -> None:
    for a in agreements:
        g = a.agreement
        kappa = "n/a" if g.kappa is None else f"{g.kappa:.2f}"
        inflation = "n/a" if g.inflation is None else f"{g.inflation:.2f}×"
        print(
            f"agreement {a.judge_a} vs {a.judge_b} ({a.prompt_set}, {a.model_hash}): n={g.n_decided} "
            f"(left out: {a.excluded} undecided or copyright; coverage {a.coverage}) kappa={kappa} "
            f"inflation={inflation} McNemar p={g.mcnemar_p:.3g} ({g.mcnemar_method})"
        )


def _print_flips(found) -> None:
    from engine.modelfiles import model_names
    from engine.stats import FLIP_ALPHA

    names = model_names(m for *_, f in found for m in (f.model_a, f.model_b))
    for judge, version, prompt_set, f in found:
        verdict = "significant" if f.significant else f"not significant (corrected p >= {FLIP_ALPHA:g})"
        print(
            f"ranking flip at {f.depth:g} % depth ({prompt_set}, {judge} {version}): "
            f"{names[f.model_a]} ({f.layers} layers) "
            f"{f.full_asr_a:.0%} -> {f.asr_a:.0%} vs {names[f.model_b]} ({f.layers_b} layers) "
            f"{f.full_asr_b:.0%} -> {f.asr_b:.0%}; p={f.p_value:.3g} Holm p={f.p_value_corrected:.3g} "
            f"[{f.test}] {verdict}"
        )


def run_export(args: argparse.Namespace) -> int:
    from engine.store import Store

    with Store.open(args.db, read_only=True) as store:
        _check_prompt_sets(store, args.prompts)
        path = store.export(args.out, prompt_sets=args.prompts, overwrite=args.force)
    print(f"exported generations and verdicts to {path}", file=sys.stderr)
    return 0


def run_label(args: argparse.Namespace) -> int:
    from engine.judges import human_verdict
    from engine.store import Store

    with Store.open(args.db, create=False) as store:
        completion = store.get_completion(args.completion_key)
        if completion is None:
            raise UsageError(f"no completion with key {args.completion_key!r} in {args.db}: see `export`")
        store.save_verdicts(
            [human_verdict(completion.key, args.label, args.note, completion=completion.text)]
        )
    print(f"labelled {args.completion_key} as {args.label!r}", file=sys.stderr)
    return 0
