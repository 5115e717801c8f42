"""`mambacast train`: one model per symbol (or --stack, --parallel, --global) into the store."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..config import PRESETS, TrainConfig, preset
from .common import EXIT_FAILED, CLIError, check_device, check_store, one_line

__all__ = ["add_train"]

def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a Mamba model per symbol (the guide's train_mamba_models.py)",
                       description="Train one Mamba model per symbol and store weights, metadata, metrics "
                                   "and checkpoints under --save-dir.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--test", action="store_true", help="train the test symbols AAPL, MSFT, GOOGL")
    which.add_argument("--symbols", help="comma list (AAPL,MSFT) or a universe name (TEST, TIER_1, SAMPLE)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 50; early stopping may end sooner)")
    p.add_argument("--batch-size", type=int, help="batch size (default 32)")
    p.add_argument("--days", type=int, default=2000, help="trading days of history to use (default 2000)")
    p.add_argument("--parallel", type=int, default=1,
                   help="worker processes training at once, the CPU threads divided between them (with --stack: "
                        "that many stacks)")
    p.add_argument("--global", dest="global_model", action="store_true",
                   help="train one model on the pooled windows of all the symbols, stored as _GLOBAL and served "
                        "for any symbol without its own model")
    p.add_argument("--loss", choices=["nll", "mse"], default="nll",
                   help="training objective: nll, the Student-t likelihood of the whole distribution, with "
                        "checkpoints and early stopping on validation CRPS (default); mse, the guide's")
    p.add_argument("--garch-weight", type=float,
                   help="weight of the stock's own GARCH(1,1)-t in the served distribution (default 1/3, see "
                        "docs/model.md; with --har-weight 0 as well: the network alone)")
    p.add_argument("--har-weight", type=float,
                   help="weight of the stock's own HAR-t (realised-variance regression) in the served "
                        "distribution (default 1/3; the network gets 1 minus both weights)")
    p.add_argument("--stack", action="store_true",
                   help="train every symbol's own model together as one batched computation (same results as one "
                        "at a time; per-symbol time is then the whole stack's); with --parallel N, N stacks of "
                        "consecutive symbols in worker processes")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="train the symbols as tasks on a Ray cluster: ADDRESS (HOST:PORT, auto, ray://HOST:PORT) "
                        "joins one, none starts a local one sized to this machine; with --stack each task trains "
                        "a stacked group. The --save-dir must be on a filesystem every node sees "
                        "(docs/scaling.md; needs pip install 'mambacast[ray]')")
    p.add_argument("--source", default="sample", choices=["sample", "csv", "parquet", "yahoo"],
                   help="price source (default: sample, real prices bundled with the install)")
    p.add_argument("--data", help="file or folder for --source csv/parquet")
    p.add_argument("--with-range", action="store_true",
                   help="add range-based (Parkinson) volatility features: needs highs and lows (the sample source "
                        "then reads its OHLCV files: AAPL, MSFT, GOOGL, IBM, FB)")
    p.add_argument("--with-volume", action="store_true",
                   help="add volume features (needs a source with volume, e.g. AAPL, MSFT, GOOGL from bokeh)")
    p.add_argument("--save-dir", default="models/mamba", help="model store folder (default models/mamba)")
    p.add_argument("--preset", default="default",
                   help=f"row of the guide's tuning table ({', '.join(PRESETS)}) or a preset JSON file "
                        "(model_config, train_config; `mambacast tune` writes one)")
    p.add_argument("--learning-rate", type=float, help="Adam learning rate (default from the preset: 0.001)")
    p.add_argument("--seed", type=int, help="random seed (default the preset's: 42); same seed + data = same weights "
                                            "on CPU")
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
        if event == "retry":
            self._line(f"{tag} its Ray worker died ({data['error']}); retrying (attempt {data['attempt']}/"
                       f"{data['max_attempts']}) from its last checkpoint")
            return
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
    from ..data.universe import TEST, parse_symbols

    if not args.test and not args.symbols:
        raise CLIError("say what to train: --test (AAPL, MSFT, GOOGL) or --symbols AAPL,MSFT or --symbols TIER_1")
    symbols = list(TEST) if args.test else parse_symbols(args.symbols)
    model_config, train_config = preset(args.preset)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                   ("learning_rate", args.learning_rate), ("seed", args.seed),
                                   ("loss", args.loss), ("garch_weight", args.garch_weight),
                                   ("har_weight", args.har_weight)) if v is not None}
    train_config = TrainConfig.from_dict({**train_config.to_dict(), **overrides})
    if args.days is not None and args.days < 1:
        raise CLIError(f"--days {args.days} is invalid: must be a positive number of trading days")
    if args.source in ("csv", "parquet") and not args.data:
        raise CLIError(f"--source {args.source} needs --data PATH (a file, or a folder with one file per symbol)")
    if args.ray is not None and (args.parallel > 1 or args.global_model):
        raise CLIError("--ray runs the symbols as tasks on a Ray cluster: drop --parallel and --global")
    if args.global_model and (args.stack or args.parallel > 1 or args.with_volume or args.with_range):
        raise CLIError("--global trains one pooled model of the closes in one process: drop --stack, --parallel, "
                       "--with-volume and --with-range")
    if args.parallel > 1 and args.device not in (None, "auto", "cpu"):
        raise CLIError("--parallel > 1 trains in CPU worker processes; use --parallel 1 with --device cuda")
    check_device(args.device)
    check_store(args.save_dir)
    # imported after the checks, so that a mistake is answered without waiting for it (about 2 s)
    from ..train.pipeline import train_symbols
    printer = _TrainPrinter(args.quiet, bar=sys.stdout.isatty() and args.parallel == 1 and not args.stack
                            and args.ray is None)
    t0 = time.perf_counter()
    if args.global_model:
        return _train_global(args, symbols, model_config, train_config, printer, t0)
    common = dict(progress=printer, model_config=model_config, train_config=train_config, days=args.days,
                  source=args.source, data_path=args.data, save_dir=args.save_dir, resume=args.resume,
                  device=args.device, include_volume=args.with_volume, include_range=args.with_range)
    if args.ray is not None:
        from ..train.distributed import train_symbols_ray

        try:
            results = train_symbols_ray(symbols, None if args.ray == "local" else args.ray, stack=args.stack,
                                        **common)
        except ImportError as exc:
            raise CLIError(str(exc)) from None
    else:
        results = train_symbols(symbols, parallel=args.parallel, stack=args.stack, side_work=True, **common)
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
            print(f"mambacast: error: {one_line(r['error'])}", file=sys.stderr)
    return EXIT_FAILED if failed else 0


def _train_global(args: argparse.Namespace, symbols: list[str], model_config: Any, train_config: TrainConfig,
                  printer: _TrainPrinter, t0: float) -> int:
    from ..train.pooled import train_global

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
