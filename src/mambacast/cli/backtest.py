"""`mambacast backtest`: the walk-forward backtest of the model and the baselines, with its report."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from ..config import PRESETS, TrainConfig, preset
from .common import CLIError, check_device, check_report_dir

__all__ = ["add_backtest", "LogOnce"]

def add_backtest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backtest", help="walk-forward backtest of the model against baselines, with a report",
                       description="Refit the model and the baselines every --refit-every trading days on data "
                                   "that ends an embargo (the longest horizon) before the forecasts they make, "
                                   "score every out-of-sample forecast, test the model against each baseline "
                                   "(Diebold-Mariano) and write metrics, plots and a self-contained HTML report.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--test", action="store_true", help="backtest the test symbols AAPL, MSFT, GOOGL")
    which.add_argument("--symbols", help="comma list (AAPL,MSFT) or a universe name (TEST, TIER_1, SAMPLE)")
    p.add_argument("--start", help="first forecast origin (YYYY-MM-DD); earlier history trains the first fit "
                                   "(default: after --min-train-days of history)")
    p.add_argument("--end", help="last date of data used at all (YYYY-MM-DD; default: all)")
    p.add_argument("--report", default="out/backtest", metavar="DIR",
                   help="folder for report.html, metrics.json/.csv, dm.csv, forecasts.csv.gz, plots "
                        "(default out/backtest)")
    p.add_argument("--refit-every", type=int, default=252, help="trading days between refits (default 252)")
    p.add_argument("--window", choices=["expanding", "rolling"], default="expanding",
                   help="training window: all history up to the cutoff, or the last --train-days")
    p.add_argument("--train-days", type=int,
                   help="training window of the baselines and of --model symbol: with --window rolling its length "
                        "(default 2000); with --window expanding the first window is cut to its last TRAIN_DAYS "
                        "days and later ones grow from there (default: no cut, all history before the first "
                        "cutoff). --model global reads each symbol's last 2520 days instead")
    p.add_argument("--min-train-days", type=int, default=500, help="fewest training days before the first origin")
    p.add_argument("--horizons", default="1,5,10,30", help="forecast horizons in trading days (default 1,5,10,30)")
    p.add_argument("--preset", choices=PRESETS, default="small",
                   help="model/training preset for every refit (default small: d_model 32, 2 layers, 20 epochs)")
    p.add_argument("--epochs", type=int, help="maximum epochs per refit (default from the preset; early stopping "
                                              "on the last 20%% of each training window may end sooner)")
    p.add_argument("--batch-size", type=int, help="batch size (default from the preset; 256 for --model global, "
                                                  "whose pooled training set is many times larger)")
    p.add_argument("--seed", type=int, default=42, help="random seed of every refit (default 42)")
    p.add_argument("--seeds", help="comma list of seeds (e.g. 42,7,123): the model is refitted once per seed "
                                   "(named mamba_s42, ...), the baselines once, and every comparison is reported "
                                   "per seed and as the spread over seeds (default: one model, --seed)")
    p.add_argument("--baselines", help="comma list of baselines (default all: random_walk,drift,momentum,"
                                       "hist_vol,garch_t,har_t)")
    p.add_argument("--garch-weight", type=float,
                   help="weight of the stock's own GARCH(1,1)-t in the model's distribution (default 1/3, as "
                        "mambacast train stores it; with --har-weight 0 as well: the network alone)")
    p.add_argument("--har-weight", type=float,
                   help="weight of the stock's own HAR-t in the model's distribution (default 1/3)")
    p.add_argument("--model", choices=["global", "symbol"], default="global",
                   help="global: one network per refit trained on every backtested symbol's history (default); "
                        "symbol: one network per symbol and refit (the guide's per-symbol models)")
    p.add_argument("--no-model", action="store_true", help="baselines only (no Mamba refits)")
    p.add_argument("--strict", action="store_true",
                   help="predict one origin at a time from the prices up to it (slower; same numbers)")
    p.add_argument("--no-forecasts-file", action="store_true", help="do not write forecasts.csv.gz")
    p.add_argument("--source", default="sample", choices=["sample", "csv", "parquet", "yahoo"])
    p.add_argument("--data", help="file or folder for --source csv/parquet")
    p.add_argument("--device", default="cpu", help="device of the model's refits (default cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for the refits (default 1: the same numbers on any machine, since the "
                        "thread count changes float rounding and so the trained models, and on a busy machine extra "
                        "threads wait on each other; on an idle 2-core machine 2 trained the global model 1.4-1.7x "
                        "faster, docs/benchmarks.md)")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the tables")
    p.set_defaults(func=_cmd_backtest)


# The global model's pooled training set is ~20x a symbol's: larger batches keep an epoch's step count,
# and so a refit's time, close to a per-symbol refit's.
_GLOBAL_BATCH = 256


class _BacktestPrinter:
    """Progress lines for the backtest (a per-epoch bar on a terminal)."""

    def __init__(self, quiet: bool, bar: bool):
        self.quiet, self.bar = quiet, bar
        self._open = False
        self._block_times: list[float] = []
        self.t0 = time.perf_counter()

    def _line(self, text: str) -> None:
        if self._open:
            sys.stdout.write("\r\033[K")
            self._open = False
        print(text, flush=True)

    def epoch(self, symbol: str, epoch: int, epochs: int, logs: dict[str, float]) -> None:
        if self.quiet or not self.bar:
            return
        sys.stdout.write(f"\r\033[K[{symbol}]   epoch {epoch + 1}/{epochs} val_loss {logs['val_loss']:.4f}")
        sys.stdout.flush()
        self._open = True

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if self.quiet:
            return
        tag = f"[{data.get('symbol', '')}]"
        if event == "symbol_start":
            self._block_times = []
            self._line(f"{tag} {data['n_origins']} forecast origins {data['first_origin'][:10]} .. "
                       f"{data['last_origin'][:10]}, {data['n_blocks']} refits")
        elif event == "fit_start" and data["forecaster"].startswith("mamba"):
            self._line(f"{tag} refit {data['block'] + 1}/{data['n_blocks']}: training on {data['train_days']} days")
        elif event == "block_end":
            self._block_times.append(data["seconds"])
            left = data["n_blocks"] - data["block"] - 1
            eta = f", ~{left * sum(self._block_times) / len(self._block_times):.0f}s left for this symbol" \
                if left else ""
            self._line(f"{tag} refit {data['block'] + 1}/{data['n_blocks']} done in {data['seconds']:.1f}s "
                       f"(total {time.perf_counter() - self.t0:.0f}s{eta})")
        elif event == "symbol_end":
            self._line(f"{tag} done in {data['seconds']:.1f}s")


class LogOnce(logging.Filter):
    """Pass each distinct (logger, message) once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _cmd_backtest(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..data.sources import load_prices
    from ..data.universe import TEST, parse_symbols
    from ..evaluate.backtest import (
        BASELINES,
        BacktestConfig,
        checked_prices,
        dated_panel,
        default_forecasters,
        model_names,
        run_backtest,
    )
    from ..report import backtest_summary, format_backtest_table, format_desk_tables, write_backtest_report

    if not args.test and not args.symbols:
        raise CLIError("say what to backtest: --test (AAPL, MSFT, GOOGL) or --symbols AAPL,MSFT or --symbols TEST")
    symbols = list(TEST) if args.test else parse_symbols(args.symbols)
    if args.source in ("csv", "parquet") and not args.data:
        raise CLIError(f"--source {args.source} needs --data PATH (a file, or a folder with one file per symbol)")
    dates = {}
    for flag in ("start", "end"):
        value = getattr(args, flag)
        if value is not None:
            try:
                dates[flag] = pd.Timestamp(value)
            except ValueError:
                raise CLIError(f"--{flag} {value!r} is not a date; use YYYY-MM-DD") from None
    try:
        horizons = tuple(int(h) for h in args.horizons.split(","))
    except ValueError:
        raise CLIError(f"--horizons {args.horizons!r} is invalid: pass comma-separated days, e.g. 1,5,10,30") from None
    for flag in ("refit_every", "epochs", "batch_size", "train_days", "min_train_days", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise CLIError(f"--{flag.replace('_', '-')} {value} is invalid: must be a positive integer")
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(v) for v in args.seeds.split(",")]
        except ValueError:
            raise CLIError(f"--seeds {args.seeds!r} is invalid: pass comma-separated non-negative integers, "
                           "e.g. 42,7,123") from None
        if any(v < 0 for v in seeds) or len(set(seeds)) != len(seeds):
            raise CLIError(f"--seeds {args.seeds!r} is invalid: seeds must be non-negative and distinct")
        if args.no_model:
            raise CLIError("--seeds needs the model: drop --no-model")
    check_device(args.device)
    check_report_dir(args.report)
    model_config, train_config = preset(args.preset)
    model_config = type(model_config).from_dict({**model_config.to_dict(), "prediction_horizons": list(horizons)})
    batch_size = args.batch_size or (_GLOBAL_BATCH if args.model == "global" else None)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", batch_size), ("seed", args.seed),
                                   ("garch_weight", args.garch_weight), ("har_weight", args.har_weight))
                 if v is not None}
    train_config = TrainConfig.from_dict({**train_config.to_dict(), **overrides})
    if seeds is not None and len(seeds) == 1:
        train_config = TrainConfig.from_dict({**train_config.to_dict(), "seed": seeds[0]})
    refs = tuple(model_names(seeds))
    config = BacktestConfig(horizons=horizons, refit_every=args.refit_every, window=args.window,
                            train_days=args.train_days, min_train_days=args.min_train_days, strict=args.strict,
                            reference="random_walk" if args.no_model else refs[0],
                            references=() if args.no_model or len(refs) == 1 else refs)
    baselines = [b.strip() for b in args.baselines.split(",")] if args.baselines else None
    unknown = [b for b in baselines or () if b not in BASELINES]
    if unknown:   # before any data is read
        raise CLIError(f"--baselines: unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    printer = _BacktestPrinter(args.quiet, bar=sys.stdout.isatty())
    # The rows the backtest reads (all days up to --end) pass the checks `data check --days all` runs on them.
    prices = checked_prices({s: load_prices(s, days=None, source=args.source, path=args.data) for s in symbols},
                            end=dates.get("end"))
    factory = default_forecasters(model_config, train_config, baselines=baselines, include_model=not args.no_model,
                                  device=args.device, on_epoch=printer.epoch, panel=dated_panel(prices),
                                  seeds=seeds if seeds is not None and len(seeds) > 1 else None, model=args.model)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    once = LogOnce()  # every refit re-runs the data checks: show each warning once, not once per refit
    handlers = logging.getLogger().handlers
    for h in handlers:
        h.addFilter(once)
    try:
        result = run_backtest(prices, factory, config, start=dates.get("start"), end=dates.get("end"),
                              progress=printer)
    finally:
        torch.set_num_threads(threads)
        for h in handlers:
            h.removeFilter(once)
    command = "mambacast backtest " + ("--test" if args.test else f"--symbols {args.symbols}") + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k in ("start", "end", "refit_every", "window", "train_days", "model", "preset", "epochs", "batch_size",
                 "seed", "seeds", "garch_weight", "har_weight", "baselines", "horizons", "source", "data", "threads",
                 "report")
        and v is not None) + \
        "".join(f" --{k.replace('_', '-')}" for k in ("no_model", "strict") if getattr(args, k))
    result.info.update({"source": args.source})
    if not args.no_model:
        result.info.update({"model_kind": args.model, "preset": args.preset, "epochs": train_config.epochs,
                            "batch_size": train_config.batch_size,
                            "model": {k: v for k, v in model_config.to_dict().items()
                                      if k in ("d_model", "d_state", "num_layers", "prediction_horizons")},
                            "seed": train_config.seed if seeds is None or len(seeds) == 1 else seeds,
                            "garch_weight": train_config.garch_weight, "har_weight": train_config.har_weight,
                            "torch_threads": args.threads})
    paths = write_backtest_report(result, args.report, command=command, forecasts_csv=not args.no_forecasts_file)
    print()
    print(format_backtest_table(result))
    print()
    for line in backtest_summary(result):
        print(line)
    print()
    print(format_desk_tables(result))
    print(f"\nBacktest of {len(symbols)} symbol(s) in {time.perf_counter() - t0:.1f}s; report: {paths['html']} "
          f"(metrics.json, metrics.csv, dm.csv, brier.csv, brier_dm.csv, reliability.csv, coverage_by_year.csv, "
          f"pit.csv" + (", seed_spread.csv" if "seed_spread" in result.tables else "") + " beside it)")
    return 0
