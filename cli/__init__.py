"""The ``hepascope`` command: the one CLI root, on top of every room. It builds the parser
from each room's ``add_subcommands`` (no room imports another room's CLI), sets up logging
and turns errors into exit statuses. Each subcommand has ``--help``. Exit status: 0 done;
1 ``eval --check`` found a figure of report.json that its predictions.csv does not give; 2
any ``HepascopeError`` (one line on stderr, never a traceback) or a bad argument (argparse's
usage line); 3 ``run``/``replay`` whose source ended while the model was down, so that its
last frames got no result (one line on stderr; the summary is still printed and written);
1 ``bench`` with a failed section (named in one line on stderr; the results still written);
130 interrupted by Ctrl-C outside a run (a run stops cleanly on SIGINT/SIGTERM: 0)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from hepascope.bench.cli import add_subcommands as add_bench
from hepascope.core.errors import HepascopeError
from hepascope.core.logs import LEVELS, error_line
from hepascope.core.logs import configure as configure_logging
from hepascope.phantom.cli import add_subcommands as add_phantom
from hepascope.stream.cli import add_subcommands as add_stream
from hepascope.stream.keys_cli import add_subcommand as add_keys
from hepascope.train.cli import add_phantom_dataset
from hepascope.train.cli import add_subcommands as add_train

EXIT_ERROR = 2         # a HepascopeError (or argparse's usage error)
EXIT_INTERRUPTED = 130


def add_rooms(sub: argparse._SubParsersAction) -> None:
    """Every room's subcommands, in the order ``--help`` lists them. Registration imports
    neither torch nor TensorRT: the handlers import what they run."""
    add_stream(sub)            # run, replay, overlay
    add_phantom_dataset(add_phantom(sub))  # phantom ...; its 'dataset' needs train's tasks
    add_keys(sub)
    add_train(sub)             # train, eval, export, demo, build
    add_bench(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hepascope",
        description="Real-time AI pipeline for live liver ultrasound.")
    parser.add_argument("--version", action="version", version=f"hepascope {_version()}")
    add_log_args(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_rooms(sub)
    _log_args_everywhere(parser)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hepascope")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def add_log_args(p: argparse.ArgumentParser, *, root: bool = True) -> None:
    """``-v``, ``--log-level``, ``--log-json``. On a subcommand their defaults are
    SUPPRESS, so that ``hepascope -v run`` and ``hepascope run -v`` mean the same."""
    d: dict[str, Any] = {} if root else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("logging")
    g.add_argument("-v", "--verbose", action="store_true", help="log more (= --log-level info)",
                   **d)
    g.add_argument("--log-level", choices=LEVELS, type=str.lower, metavar="LEVEL",
                   help=f"one of {', '.join(LEVELS)} (default warning; -v: info)", **d)
    g.add_argument("--log-json", action="store_true",
                   help="log lines as JSON objects (time, level, logger, message), one per "
                   "line on stderr, for a log collector", **d)


def _log_args_everywhere(parser: argparse.ArgumentParser) -> None:
    """Add the logging options to every subcommand, nested ones (``phantom session``)
    included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                add_log_args(child, root=False)
                _log_args_everywhere(child)


def _log_level(args: argparse.Namespace) -> str:
    if args.log_level:
        return str(args.log_level)
    return "info" if args.verbose else "warning"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(_log_level(args), json_lines=args.log_json)
    # which engine runs, and why (--engine auto), is worth a line even without -v
    logging.getLogger("hepascope.engines.select").setLevel(logging.INFO)
    try:
        return int(args.func(args))
    except HepascopeError as e:
        print(error_line(str(e)), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
