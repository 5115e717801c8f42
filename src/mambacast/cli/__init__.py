"""The `mambacast` command line. Library code logs; only this package prints.

One module per command (`train`, `tune`, `data`, `predict`, `backtest`; `serve` holds `serve`, `models`, `monitor`),
their shared checks and exit statuses in
`common`; this module builds the parser and turns user errors into one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from .. import __version__
from .backtest import add_backtest
from .common import EXIT_USAGE, CLIError, Parser, one_line
from .data import add_data
from .predict import add_predict
from .serve import add_service_commands
from .train import add_train
from .tune import add_tune


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mambacast", description="Train, serve and backtest Mamba forecasters of daily stock prices.")
    parser.add_argument("--version", action="version", version=f"mambacast {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train(sub)
    add_tune(sub)
    add_data(sub)
    add_predict(sub)
    add_backtest(sub)
    add_service_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, OSError) as exc:
        print(f"mambacast: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mambacast: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("mambacast: terminated", file=sys.stderr)
        return 143
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM while a command runs, raised in the main thread (a BaseException, as KeyboardInterrupt, so that no
    per-symbol `except Exception` takes it for one symbol's failure): the command's cleanup runs (worker processes
    stopped, temporary files removed) instead of the process vanishing."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


__all__ = ["main", "build_parser", "CLIError"]
