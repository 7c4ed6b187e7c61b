"""``python -m engine probe``: per-layer probes, logit-lens refusal and the alignment lag of a prompt set."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.cli.common import (
    DEFAULT_DB,
    UsageError,
    add_model_arguments,
    add_ray_arguments,
    executor_from_args,
    load_from_args,
    print_json,
)
from engine.paths import DEFAULT_MODEL
from engine.probes import (
    ACTIVATIONS_DIR,
    DEFAULT_FOLDS,
    DEFAULT_SEED,
    analyse,
    analyse_with,
    save_directions,
    summary_row,
)
from engine.types import GenerationParams, Prompt

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe", help="per-layer harmful-vs-benign probes, logit-lens refusal and the alignment lag"
    )
    add_model_arguments(parser)
    parser.add_argument("--prompts", default="demo", help="built-in set name or CSV path (needs labels)")
    parser.add_argument(
        "--db",
        default=DEFAULT_DB,
        help="DuckDB file to save results in: a DepthScope database, or a new path (created when the "
        "results are saved); any other file is refused untouched before the probes run",
    )
    parser.add_argument("--no-save", action="store_true", help="do not write to the database")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="stratified CV folds")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="fold shuffling seed")
    parser.add_argument("--no-chat-template", action="store_true", help="tokenize prompts as-is")
    parser.add_argument("--system-prompt", default=None, help="system message for the chat template")
    parser.add_argument("--cache-dir", default=str(ACTIVATIONS_DIR), help="activation cache folder")
    parser.add_argument("--json", action="store_true", help="print one JSON array on stdout")
    add_ray_arguments(parser)
    parser.set_defaults(run=run_probe)


def run_probe(args: argparse.Namespace) -> int:
    from engine.datasets import load_prompt_set
    from engine.probes.cv import require_both_classes
    from engine.store import StoreError

    if args.folds < 2:
        raise UsageError("--folds must be at least 2")
    prompts = load_prompt_set(args.prompts)
    require_both_classes([p.label == "harmful" for p in prompts])  # before the model loads
    if not args.no_save:
        _refuse_a_foreign_db(args.db)
    params = GenerationParams(chat_template=not args.no_chat_template, system_prompt=args.system_prompt)
    with executor_from_args(
        args, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code
    ) as executor:
        began = time.perf_counter()
        loaded, analysis = _analyse(args, executor, prompts, params)
        seconds = time.perf_counter() - began
    direction_file = save_directions(analysis, args.cache_dir)
    status = 0
    if not args.no_save:
        try:
            written = _save_to_store(args, loaded, prompts, analysis, direction_file)
            log.info("saved %d probe results to %s", written, args.db)
        except StoreError as exc:  # the results are still printed; the exit status says they were not saved
            log.error("could not save probe results to %s: %s", args.db, exc)
            status = 1
    rows = analysis.layer_rows()
    summary = summary_row(analysis, loaded, seconds)
    if args.json:
        print_json([*rows, summary])
    else:
        print_probe_table(rows, summary)
    return status


def _analyse(args: argparse.Namespace, executor, prompts: Sequence[Prompt], params: GenerationParams):
    """(model handle, analysis): here, or with activations from Ray actors and the probes fitted here."""
    settings = {"folds": args.folds, "seed": args.seed, "cache_dir": args.cache_dir}
    if executor is None:
        loaded = load_from_args(args)
        return loaded, analyse(loaded, prompts, params, **settings)
    handle = executor.load(args.model or DEFAULT_MODEL)
    try:
        return handle, analyse_with(executor, handle, prompts, params, **settings)
    finally:
        executor.release(handle)


def _refuse_a_foreign_db(db: str) -> None:
    """Before any compute: an existing ``--db`` must be a DepthScope database (Store.open recognises it
    positively and leaves any other file untouched). A new path is created only when results are saved."""
    from engine.store import Store, StoreLockedError

    if not Path(db).exists():
        return
    try:
        with Store.open(db):
            pass
    except StoreLockedError:  # busy now, maybe free by the time the results are saved (which retries)
        return


def _save_to_store(args: argparse.Namespace, loaded, prompts: Sequence[Prompt], analysis, direction) -> int:
    from engine.store import Store
    from engine.usecases import save_probe

    with Store.open(args.db) as store:
        return save_probe(store, loaded, prompts, args.prompts, analysis, args.cache_dir, direction)


def print_probe_table(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(
        f"{'layer':>5} {'depth':>6} {'acc':>6} {'±':>5} {'auroc':>6} {'dom':>6} {'refusal h/b':>13} {'p':>7} "
        f"{'vs base':>7} {'p(vs)':>7}"
    )
    for r in rows:
        refusal = f"{r['refusal_mass_harmful']:.3f}/{r['refusal_mass_benign']:.3f}"
        versus = f"{r['baseline_gain']:+.3f}{'*' if r['beats_baselines'] else ' '}"
        print(
            f"{r['layer']:>5} {r['depth_percent']:>5.1f}% {r['accuracy']:>6.3f} {r['accuracy_std']:>5.3f} "
            f"{r['auroc']:>6.3f} {r['dom_accuracy']:>6.3f} {refusal:>13} {r['refusal_p_value']:>7.3g} "
            f"{versus:>7} {r['baseline_p_value']:>7.3g}"
        )
    print(
        f"content baselines (same folds, prompt without chat template): bag of words "
        f"{_accuracy(summary['baseline_bow_accuracy'])}, mean input embedding "
        f"{_accuracy(summary['baseline_embedding_accuracy'])}; * = layer beats the best "
        f"({summary['harm_detection_best_baseline']}) by >= {summary['harm_detection_margin']:.0%} with "
        f"{summary['harm_detection_test']} p < {summary['harm_detection_alpha']:g}"
    )
    if summary.get("training_overlap") is not None:
        print(
            f"training overlap: {summary['training_overlap']} of {summary['n_prompts']} probe prompts are in "
            "the demo model's training corpus"
        )
    lag = (
        "n/a"
        if summary["lag_layers"] is None
        else f"{summary['lag_layers']} layers ({summary['lag_percent']:.1f}%)"
    )
    print(
        f"harm detection layer: {summary['harm_detection_layer']}  ·  refusal emergence layer: "
        f"{summary['refusal_emergence_layer']}  ·  alignment lag: {lag}"
    )


def _accuracy(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
