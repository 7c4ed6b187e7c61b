"""``python -m engine``: the command-line face of the engine. Parsing and output only.

One module per command group; each has ``add_parser(subparsers)``, which adds its command(s) and sets
``run`` (a callable(args) -> exit status) as the parser default. Library modules never import this
package. With ``--json`` stdout carries exactly one JSON document; logs and progress go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from engine.errors import DepthScopeError
from engine.fileerrors import file_error_message

from . import demo_model, generate, judge, lens, probe, report, sweep

# The order of the help listing.
COMMAND_GROUPS = (generate, judge, sweep, report, demo_model, probe, lens)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="DepthScope engine: truncated generation, judging, sweeps and probes.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_parser(subparsers)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user: printed without a traceback. Anything else
    (a plain ValueError included) is a bug and surfaces with its traceback."""
    return (DepthScopeError,)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    from engine.executors import WorkerFailedError

    try:
        return args.run(args)
    except WorkerFailedError as exc:
        print(f"error: Ray workers failed: {exc}. Stored rows kept; re-run to resume.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished batches are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable cache or export folder, a file in the way, a full disk
        print(f"error: {file_error_message(exc, 'finish ' + args.command)}", file=sys.stderr)
        return 2
