"""``python -m engine sweep``: generate and judge prompts × depths × models into the database."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from engine.judges.names import HARMBENCH, KEYWORD
from engine.paths import DEFAULT_MODEL

from .common import (
    UsageError,
    add_db_argument,
    add_depth_arguments,
    add_exit_arguments,
    add_generation_arguments,
    add_ray_arguments,
    add_removal_arguments,
    check_batch_rows,
    check_drop_fits,
    check_fits_context,
    check_layers_fit,
    check_load_options,
    check_min_layers_fit,
    depth_request,
    executor_from_args,
    exit_thresholds,
    generation_params,
    judge_names,
)

log = logging.getLogger("engine")
# How long a batch's write waits for readers (dashboard, `report`) to let go of the file.
WRITER_LOCK_TIMEOUT_S = 60.0


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the batch in flight is rolled back, the run marked interrupted."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within: SIGTERM raises Terminated. When it lands inside DuckDB, DuckDB turns it into its own
    interrupt (which the store re-raises as KeyboardInterrupt), so that case is recognised by the flag."""
    received: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except KeyboardInterrupt as exc:
        if received and not isinstance(exc, Terminated):
            raise Terminated from exc
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep", help="generate and judge prompts × depths × models into the database"
    )
    parser.add_argument(
        "--model", action="append", help="a model (repeat for more); default the embedded one"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16"
    )
    parser.add_argument("--prompts", default="demo", help="a built-in set name or a CSV path (default demo)")
    add_depth_arguments(parser)
    parser.add_argument("--judges", default=KEYWORD, help=f"comma-separated: {KEYWORD},{HARMBENCH}")
    parser.add_argument(
        "--judge-model", default=None, help=f"HarmBench classifier folder (for --judges {HARMBENCH})"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts of the set")
    add_generation_arguments(parser)
    add_exit_arguments(parser)
    add_removal_arguments(parser)
    add_db_argument(parser)
    add_ray_arguments(parser)
    parser.set_defaults(run=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    from engine.store import Store
    from engine.sweep import SweepSpec, run_sweep

    depths, layers = depth_request(args)  # everything the user typed is checked before a model loads
    params = generation_params(args)
    thresholds = exit_thresholds(args)
    check_batch_rows(args)
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit: {args.limit} is not a whole number ≥ 1 (leave it out for every prompt)")
    models = tuple(args.model or [DEFAULT_MODEL])
    check_fits_context(models, params)
    check_layers_fit(models, (depths, layers))
    check_min_layers_fit(models, args)
    check_load_options(args)
    check_drop_fits(models, params.drop_layers, args.remove)
    params, pruning = prune_for_sweep(args, models, params)
    spec = SweepSpec(
        models=models,
        prompt_set=args.prompts,
        depths=depths,
        layers=layers,
        judges=judge_names(args.judges, args.judge_model),
        judge_model=args.judge_model,
        params=params,
        limit=args.limit,
        rows_per_batch=args.batch_rows,
        thresholds=thresholds,
        pruning=json.dumps(pruning) if pruning else "",
    )
    show, close_bars = _progress_bars()
    try:
        with (
            sigterm_as_interrupt(),
            executor_from_args(args, local=True, device=args.device, dtype=args.dtype) as executor,
        ):
            if args.ray:
                log.info("Ray: %d worker(s), %g GPU(s) each", executor.workers, args.gpus_per_worker)
            with Store.open(args.db, lock_timeout_s=WRITER_LOCK_TIMEOUT_S) as store:
                summary = run_sweep(spec, store, progress=show, executor=executor)
    except Terminated:
        print("terminated: finished batches are kept; run the same command again to resume", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        close_bars()
    print(
        f"sweep {summary.run_id}: {summary.generated} new completions, {summary.cached} already stored, "
        f"{summary.verdicts} new verdicts → {args.db}",
        file=sys.stderr,
    )
    return 0


def prune_for_sweep(args: argparse.Namespace, models: tuple[str, ...], params):
    """``--prune``: (params dropping the layers chosen, the per-layer scores for the run's record),
    scored on one model here before the sweep starts (the choice belongs to a model, so a pruned sweep
    takes one model)."""
    if args.prune is None:
        return params, {}
    if len(models) > 1:
        raise UsageError("--prune: the layers chosen belong to one model; sweep one --model at a time")
    from .common import load_from_args, pruning_choice

    args.model = models[0]
    args.trust_remote_code = False
    return pruning_choice(args, load_from_args(args), params)


def _progress_bars():
    """A progress callback drawing one tqdm bar per (model, stage) on stderr, and a function closing them."""
    from tqdm import tqdm

    bars: dict[tuple[str, str], tqdm] = {}

    def show(progress) -> None:
        if progress.stage in ("loading", "done"):
            log.info("%s: %s", progress.model, progress.stage)
            return
        key = (progress.model, progress.stage)
        if key not in bars:
            desc = f"{progress.stage} {progress.model}"
            bars[key] = tqdm(total=progress.total, desc=desc, unit="row", file=sys.stderr)
        bar = bars[key]
        bar.update(progress.done - bar.n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return show, close
