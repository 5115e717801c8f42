"""The `mambacast` command line. Library code logs; only this module prints."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, NoReturn

from . import __version__
from .config import PRESETS, TrainConfig, preset


class CLIError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


#: exit statuses (docs/prediction.md): 1 some symbols failed to train, 2 a usage or data error (one line on
#: stderr); `predict --strict`: 3 a symbol has no model, 4 a symbol's model exists but cannot be used.
EXIT_FAILED, EXIT_USAGE, EXIT_NO_MODEL, EXIT_BAD_MODEL = 1, 2, 3, 4


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage block stays on --help (the README's promise)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- train ---------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a Mamba model per symbol (the guide's train_mamba_models.py)",
                       description="Train one Mamba model per symbol and store weights, metadata, metrics "
                                   "and checkpoints under --save-dir.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--test", action="store_true", help="train the test symbols AAPL, MSFT, GOOGL")
    which.add_argument("--symbols", help="comma list (AAPL,MSFT) or a universe name (TEST, TIER_1, SAMPLE)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 50; early stopping may end sooner)")
    p.add_argument("--batch-size", type=int, help="batch size (default 32)")
    p.add_argument("--days", type=int, default=2000, help="trading days of history to use (default 2000)")
    p.add_argument("--parallel", type=int, default=1, help="symbols trained at once in worker processes")
    p.add_argument("--global", dest="global_model", action="store_true",
                   help="train one model on the pooled windows of all the symbols, stored as _GLOBAL and served "
                        "for any symbol without its own model")
    p.add_argument("--loss", choices=["nll", "mse"], default="nll",
                   help="training objective: nll, the Student-t likelihood of the whole distribution, with "
                        "checkpoints and early stopping on validation CRPS (default); mse, the guide's")
    p.add_argument("--garch-weight", type=float,
                   help="weight of a per-stock GARCH(1,1)-t pooled into the served distribution (0: the "
                        "network alone; default 0.5, see docs/model.md)")
    p.add_argument("--stack", action="store_true",
                   help="train every symbol's own model together as one batched computation on the CPU (same "
                        "results as one at a time; per-symbol time is then the whole stack's)")
    p.add_argument("--source", default="sample", choices=["sample", "csv", "parquet", "yahoo"],
                   help="price source (default: sample, real prices bundled with the install)")
    p.add_argument("--data", help="file or folder for --source csv/parquet")
    p.add_argument("--with-range", action="store_true",
                   help="add range-based (Parkinson) volatility features: needs highs and lows (the sample source "
                        "then reads its OHLCV files: AAPL, MSFT, GOOGL, IBM, FB)")
    p.add_argument("--with-volume", action="store_true",
                   help="add volume features (needs a source with volume, e.g. AAPL, MSFT, GOOGL from bokeh)")
    p.add_argument("--save-dir", default="models/mamba", help="model store folder (default models/mamba)")
    p.add_argument("--preset", choices=PRESETS, default="default", help="row of the guide's tuning table")
    p.add_argument("--learning-rate", type=float, help="Adam learning rate (default from the preset: 0.001)")
    p.add_argument("--seed", type=int, default=42, help="random seed; same seed + data = same weights on CPU")
    p.add_argument("--resume", action="store_true",
                   help="skip symbols already trained and continue interrupted ones from their last epoch")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    p.add_argument("--quiet", action="store_true", help="only the final line per symbol and the summary")
    p.set_defaults(func=_cmd_train)


class _TrainPrinter:
    """Turns pipeline progress events into the guide's lines (and a progress bar on a terminal)."""

    def __init__(self, quiet: bool, bar: bool):
        self.quiet, self.bar = quiet, bar
        self._bar_open = False

    def _line(self, text: str) -> None:
        if self._bar_open:
            sys.stdout.write("\r\033[K")
            self._bar_open = False
        print(text, flush=True)

    def __call__(self, event: str, symbol: str, data: dict[str, Any]) -> None:
        tag = f"[{symbol}]"
        if event == "done":
            if data.get("status") == "failed":
                self._line(f"{tag} ✗ Failed: {data['error']}")
            elif data.get("status") == "ok":
                crps = data.get("best_val_crps")
                self._line(f"{tag} ✓ Training complete! Best Val Loss: {data['best_val_loss']:.4f}, "
                           + (f"Val CRPS: {crps:.4f}, " if crps is not None else "")
                           + f"Time: {data['training_time']:.1f}s")
            return
        if self.quiet:
            return
        if event == "start":
            self._line(f"{tag} Starting Mamba training...")
        elif event == "loaded":
            self._line(f"{tag} Loaded {data['days']} days of price data")
        elif event == "samples":
            self._line(f"{tag} Created {data['samples']} training samples "
                       f"({data['train']} train / {data['val']} validation after the embargo)")
        elif event == "model":
            self._line(f"{tag} Model has {data['parameters']:,} parameters")
            resumed = data.get("resumed_epoch")
            self._line(f"{tag} Training for {data['epochs']} epochs...")
            if resumed is not None:   # resumed_epoch: the 0-based index of the next epoch = epochs already done
                self._line(f"{tag} resumed from epoch {resumed} (its saved training state); continuing at epoch "
                           f"{resumed + 1}/{data['epochs']}")
        elif event == "baseline":
            self._line(f"{tag} untrained (the volatility baseline)  val_loss {data['val_loss']:.4f}  "
                       f"val_mae {data['val_mae']:.4f}  val_crps {data['val_crps']:.4f}")
        elif event == "batch" and self.bar:
            done = data["batch"] + 1
            width = 24
            fill = int(width * done / data["n_batches"])
            sys.stdout.write(f"\r{tag} [{'#' * fill}{'.' * (width - fill)}] {done}/{data['n_batches']} "
                             f"loss {data['loss']:.4f}")
            sys.stdout.flush()
            self._bar_open = True
        elif event == "epoch":
            self._line(f"{tag} epoch {data['epoch'] + 1}/{data['epochs']}  loss {data['train_loss']:.4f}  "
                       f"val_loss {data['val_loss']:.4f}  val_mae {data['val_mae']:.4f}  "
                       f"val_crps {data['val_crps']:.4f}  lr {data['lr']:.2g}  {data['epoch_time']:.1f}s")


def _summary_table(results: list[dict[str, Any]]) -> str:
    rows = [("symbol", "days", "samples", "best val loss", "val crps", "best epoch", "epochs", "time", "status")]
    for r in results:
        ok = r["status"] != "failed"
        t = r.get("training_time")
        crps = r.get("best_val_crps") if ok else None
        rows.append((r["symbol"], str(r.get("days", "-")) if ok else "-", str(r.get("num_samples", "-")) if ok else "-",
                     f"{r['best_val_loss']:.4f}" if ok else "-", f"{crps:.4f}" if crps is not None else "-",
                     str(r["best_epoch"]) if ok else "-",
                     str(r["total_epochs"]) if ok else "-", f"{t:.1f}s" if t else "-", r["status"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _cmd_train(args: argparse.Namespace) -> int:
    from .data.universe import TEST, parse_symbols
    from .train.pipeline import train_symbols

    if not args.test and not args.symbols:
        raise CLIError("say what to train: --test (AAPL, MSFT, GOOGL) or --symbols AAPL,MSFT or --symbols TIER_1")
    symbols = list(TEST) if args.test else parse_symbols(args.symbols)
    model_config, train_config = preset(args.preset)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                   ("learning_rate", args.learning_rate), ("seed", args.seed),
                                   ("loss", args.loss), ("garch_weight", args.garch_weight)) if v is not None}
    train_config = TrainConfig.from_dict({**train_config.to_dict(), **overrides})
    if args.days is not None and args.days < 1:
        raise CLIError(f"--days {args.days} is invalid: must be a positive number of trading days")
    if args.source in ("csv", "parquet") and not args.data:
        raise CLIError(f"--source {args.source} needs --data PATH (a file, or a folder with one file per symbol)")
    if args.stack and args.parallel > 1:
        raise CLIError("--stack and --parallel are alternatives: --stack trains every symbol in one process")
    if args.global_model and (args.stack or args.parallel > 1 or args.with_volume or args.with_range):
        raise CLIError("--global trains one pooled model of the closes in one process: drop --stack, --parallel, "
                       "--with-volume and --with-range")
    _check_device(args.device)
    _check_store(args.save_dir)
    printer = _TrainPrinter(args.quiet, bar=sys.stdout.isatty() and args.parallel == 1 and not args.stack)
    t0 = time.perf_counter()
    if args.global_model:
        return _train_global(args, symbols, model_config, train_config, printer, t0)
    results = train_symbols(symbols, parallel=args.parallel, stack=args.stack, progress=printer,
                            model_config=model_config,
                            train_config=train_config, days=args.days, source=args.source, data_path=args.data,
                            save_dir=args.save_dir, resume=args.resume, device=args.device,
                            include_volume=args.with_volume, include_range=args.with_range)
    for r in results:
        if r["status"] == "skipped":
            print(f"[{r['symbol']}] already trained in {args.save_dir} (--resume); skipped")
    print()
    print(_summary_table(results))
    failed = [r["symbol"] for r in results if r["status"] == "failed"]
    print(f"\n{len(results) - len(failed)}/{len(results)} symbols trained in {time.perf_counter() - t0:.1f}s; "
          f"models in {args.save_dir}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    for r in results:   # errors also go to stderr, one line per failed symbol, for scripts that read only it
        if r["status"] == "failed":
            print(f"mambacast: error: {_one_line(r['error'])}", file=sys.stderr)
    return EXIT_FAILED if failed else 0


def _check_device(device: str) -> None:
    """A bad --device is one line before any data is read or epoch trained."""
    from .train.trainer import resolve_device

    resolve_device(device)


def _check_store(save_dir: str) -> None:
    from .store import ModelStore

    ModelStore(save_dir).ensure_writable()


def _train_global(args: argparse.Namespace, symbols: list[str], model_config: Any, train_config: TrainConfig,
                  printer: _TrainPrinter, t0: float) -> int:
    from .train.pooled import train_global

    result = train_global(symbols, model_config=model_config, train_config=train_config, days=args.days,
                          source=args.source, data_path=args.data, save_dir=args.save_dir, resume=args.resume,
                          device=args.device, progress=printer)
    print()
    print(_summary_table([result]))
    skipped = result["skipped"]
    print(f"\nglobal model trained on {len(result['symbols'])}/{len(symbols)} symbols in "
          f"{time.perf_counter() - t0:.1f}s; stored as _GLOBAL in {args.save_dir}"
          + (f"; left out: {', '.join(sorted(skipped))}" if skipped else ""))
    return 0


# ---- data ----------------------------------------------------------------------------------------
def _add_data(sub: argparse._SubParsersAction) -> None:
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
    from .data.commands import list_symbols_table

    print(list_symbols_table(args.source, args.data))
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from .data.commands import format_quality_report, quality_report

    report = quality_report(args.symbols, args.source, args.data, days=args.days)
    print(format_quality_report(report, args.source, args.days))
    return 1 if report["status"].isin(["failed", "error"]).any() else 0


# ---- predict -------------------------------------------------------------------------------------
def _reads_ohlcv(store: Any, symbol: str) -> bool:
    """Whether the symbol's stored model reads volumes or highs and lows (the sample's OHLCV files have both)."""
    try:
        fc = store.load_metadata(symbol)["feature_config"]
    except (ValueError, KeyError, TypeError):   # no model or unreadable metadata: the predictor reports it
        return False
    return bool(fc.get("include_volume") or fc.get("include_range"))


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="forecast prices with stored models (momentum fallback otherwise)",
                       description="Forecast each symbol's price 1, 5, 10 and 30 trading days after the last "
                                   "day of its history (or --as-of), with the 80%% interval and the source.")
    p.add_argument("--symbols", required=True, help="comma list or a universe name (TEST, TIER_1, SAMPLE)")
    p.add_argument("--as-of", help="forecast from this date (YYYY-MM-DD): history after it is ignored")
    p.add_argument("--strike", type=float, help="also print P(price above STRIKE) at each horizon")
    p.add_argument("--model", choices=["auto", "symbol", "global"], default="auto",
                   help="auto: the global model (train --global) when stored, else the symbol's own (default); "
                        "symbol: per-symbol models only; global: the global model for every symbol")
    p.add_argument("--strict", action="store_true",
                   help="fail instead of answering with the momentum fallback: exit 3 when a symbol has no model, "
                        "4 when its model exists but cannot be used (damaged, tampered, another symbol's, "
                        "incompatible)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="PNG", help="save a fan chart of history and forecast quantiles")
    p.add_argument("--save-dir", default="models/mamba", help="model store folder (default models/mamba)")
    p.add_argument("--source", default="sample", choices=["sample", "csv", "parquet", "yahoo"])
    p.add_argument("--data", help="file or folder for --source csv/parquet")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    import asyncio
    import json

    import pandas as pd

    from .data.sources import load_prices
    from .data.universe import parse_symbols
    from .predict import MambaPredictor
    from .store import ModelNotFoundError, ModelStore, StoreError

    if args.strike is not None and not args.strike > 0:
        raise CLIError(f"--strike {args.strike} is invalid: must be a positive price")
    cutoff = None
    if args.as_of:
        try:
            cutoff = pd.Timestamp(args.as_of)
        except ValueError:
            raise CLIError(f"--as-of {args.as_of!r} is not a date; use YYYY-MM-DD") from None
    if args.plot:
        _check_output_file(args.plot, "--plot")
    symbols = parse_symbols(args.symbols)
    histories = {}
    store = ModelStore(args.save_dir)
    for symbol in symbols:
        frame = load_prices(symbol, days=None, source=args.source, path=args.data,
                            with_volume=_reads_ohlcv(store, symbol))
        first, last = frame.index[0].date(), frame.index[-1].date()
        if cutoff is not None:
            if not pd.Timestamp(first) <= cutoff <= pd.Timestamp(last):
                raise CLIError(f"--as-of {args.as_of} is outside {symbol}'s prices ({first} .. {last}); pick a date "
                               "in that range")
            frame = frame.loc[:cutoff]
        frame = frame.iloc[-1000:]
        # A blank close is a gap the predictor forward-fills; rows before the first price carry nothing.
        frame = frame.loc[frame["close"].first_valid_index():]
        histories[symbol] = frame
    predictor = MambaPredictor(symbols, model_dir=args.save_dir, model=args.model, strict=args.strict)

    async def run() -> list:
        return await asyncio.gather(*(predictor.predict_detailed(s, h, float(h["close"].ffill().iloc[-1]))
                                      for s, h in histories.items()))

    try:
        results = asyncio.run(run())
    except ModelNotFoundError as exc:
        print(f"mambacast: error: {_one_line(exc)} (--strict)", file=sys.stderr)
        return EXIT_NO_MODEL
    except StoreError as exc:
        print(f"mambacast: error: {_one_line(exc)} (--strict)", file=sys.stderr)
        return EXIT_BAD_MODEL
    finally:
        predictor.close()
    if args.json:
        out = []
        for r in results:
            d = r.to_dict()
            if args.strike is not None:
                d["strike"] = args.strike
                d["prob_above"] = {k: r.prob_above(args.strike, k) for k in r.prices}
            out.append(d)
        print(json.dumps(out, indent=2))
    else:
        print(_prediction_table(results, args.strike))
    if args.plot:
        from .report import plot_fan_chart

        print(f"fan chart saved to {plot_fan_chart(results, histories, args.plot)}")
    return 0


def _check_report_dir(path: str) -> None:
    """The backtest writes its report at the end of a long run: check the folder first."""
    from pathlib import Path

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"--report {path} is a file, not a folder")
    _check_output_file(str(folder / "report.html"), "--report")


def _check_output_file(path: str, flag: str) -> None:
    """A file the command will write at its end must be writable before the work starts."""
    from pathlib import Path

    target = Path(path)
    if target.is_dir():
        raise CLIError(f"{flag} {path} is a folder; pass a file name")
    folder = target.parent
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"{flag} {path}: {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe.tmp-{target.name}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CLIError(f"{flag} {path} cannot be written ({exc.strerror or exc})") from None


def _prediction_table(results: list, strike: float | None) -> str:
    head = ["symbol", "as of", "current", "horizon", "forecast", "80% interval", "source"]
    if strike is not None:
        head.insert(6, f"P(>{strike:g})")
    rows = [head]
    for r in results:
        for k, price in r.prices.items():
            q = r.quantiles[k]
            row = [r.symbol, r.as_of or "-", f"{r.current_price:.2f}", k, f"{price:.2f}",
                   f"{q[0.1]:.2f} - {q[0.9]:.2f}", r.source]
            if strike is not None:
                row.insert(6, f"{r.prob_above(strike, k):.3f}")
            rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    notes = [f"{r.symbol}: momentum fallback because {r.reason}" for r in results if r.reason]
    return "\n".join(lines + ([""] + notes if notes else []))


# ---- backtest ------------------------------------------------------------------------------------
def _add_backtest(sub: argparse._SubParsersAction) -> None:
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
                   help="weight of a per-stock GARCH(1,1)-t pooled into the model's distribution (0: the "
                        "network alone; default 0.5, as mambacast train stores it)")
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
                   help="torch CPU threads for the refits (default 1: the small refit models gain little from more, "
                        "and on a busy machine extra threads wait on each other)")
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


class _LogOnce(logging.Filter):
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

    from .data.sources import load_prices
    from .data.universe import TEST, parse_symbols
    from .evaluate.backtest import (
        BASELINES,
        BacktestConfig,
        checked_prices,
        dated_panel,
        default_forecasters,
        model_names,
        run_backtest,
    )
    from .report import backtest_summary, format_backtest_table, format_desk_tables, write_backtest_report

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
    _check_device(args.device)
    _check_report_dir(args.report)
    model_config, train_config = preset(args.preset)
    model_config = type(model_config).from_dict({**model_config.to_dict(), "prediction_horizons": list(horizons)})
    batch_size = args.batch_size or (_GLOBAL_BATCH if args.model == "global" else None)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", batch_size), ("seed", args.seed),
                                   ("garch_weight", args.garch_weight)) if v is not None}
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
    once = _LogOnce()  # every refit re-runs the data checks: show each warning once, not once per refit
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
                 "seed", "seeds", "garch_weight", "baselines", "horizons", "source", "data", "threads", "report")
        and v is not None) + \
        "".join(f" --{k.replace('_', '-')}" for k in ("no_model", "strict") if getattr(args, k))
    result.info.update({"source": args.source})
    if not args.no_model:
        result.info.update({"model_kind": args.model, "preset": args.preset, "epochs": train_config.epochs,
                            "batch_size": train_config.batch_size,
                            "model": {k: v for k, v in model_config.to_dict().items()
                                      if k in ("d_model", "d_state", "num_layers", "prediction_horizons")},
                            "seed": train_config.seed if seeds is None or len(seeds) == 1 else seeds,
                            "garch_weight": train_config.garch_weight,
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


# ---- entry point ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mambacast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mambacast {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_data(sub)
    _add_predict(sub)
    _add_backtest(sub)
    return parser


def _one_line(exc: BaseException | str) -> str:
    """The message of a user error on one line (a data error may quote a multi-line value)."""
    text = " ".join(str(exc).split()) if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return text


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
    except (CLIError, ValueError, OSError) as exc:
        print(f"mambacast: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mambacast: interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "build_parser", "CLIError"]

if __name__ == "__main__":
    sys.exit(main())
