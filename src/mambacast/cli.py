"""The `mambacast` command line. Library code logs; only this module prints."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__


class CLIError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mambacast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mambacast {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError) as exc:
        print(f"mambacast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mambacast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
