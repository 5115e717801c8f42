"""`mambacast data list` and `mambacast data check`."""

from __future__ import annotations

import argparse

__all__ = ["add_data"]

def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list available symbols and check price data quality")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    lst = data_sub.add_parser("list", help="every symbol a source has, with dates, rows and volume")
    chk = data_sub.add_parser("check", help="run the quality checks on symbols' price history")
    chk.add_argument("--symbols", required=True, help="comma list or a universe name (TEST, TIER_1, SAMPLE)")
    chk.add_argument("--days", type=_days, default=2000,
                     help="check the last N trading days (default 2000, what train reads by default), or 'all' "
                          "(what backtest reads)")
    for q in (lst, chk):
        q.add_argument("--source", default="sample", choices=["sample", "csv", "parquet", "yahoo"])
        q.add_argument("--data", help="file or folder for --source csv/parquet (cache folder for yahoo)")
    lst.set_defaults(func=_cmd_data_list)
    chk.set_defaults(func=_cmd_data_check)


def _days(text: str) -> int | None:
    """--days N (a positive count) or --days all (None: every row)."""
    if text.strip().lower() == "all":
        return None
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid days value {text!r}: pass a positive number or 'all'") from None
    if days < 1:
        raise argparse.ArgumentTypeError(f"invalid days value {text!r}: pass a positive number or 'all'")
    return days


def _cmd_data_list(args: argparse.Namespace) -> int:
    from ..data.commands import list_symbols_table

    print(list_symbols_table(args.source, args.data))
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from ..data.commands import format_quality_report, quality_report

    report = quality_report(args.symbols, args.source, args.data, days=args.days)
    print(format_quality_report(report, args.source, args.days))
    return 1 if report["status"].isin(["failed", "error"]).any() else 0
