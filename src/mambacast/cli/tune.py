"""`mambacast tune`: search the guide's hyper-parameter table with Optuna, trials on Ray; write the best preset."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from .common import CLIError, check_output_file

__all__ = ["add_tune"]

_SHORT = {"d_model": "d_model", "d_state": "d_state", "num_layers": "layers", "learning_rate": "lr",
          "batch_size": "batch", "sequence_length": "seq", "augmentation_rate": "aug"}


def add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search hyper-parameters (Optuna on Ray) and write the best as a preset file",
                       description="An Optuna study over the guide's tuning table (d_model, d_state, num_layers, "
                                   "learning rate, batch size, window length, augmentation) whose objective is the "
                                   "validation CRPS of the training period; trials run as Ray tasks, bad ones are "
                                   "pruned, the study is kept in SQLite (run the same command again to resume) and "
                                   "the best configuration is written as a preset for `train --preset PATH`.")
    p.add_argument("--symbols", required=True, help="comma list or universe; the objective is their mean")
    p.add_argument("--trials", type=int, default=20, help="trials the study should have finished (default 20)")
    p.add_argument("--preset", default="small",
                   help="the base configuration (a named preset or a preset file): its epochs, patience and seed "
                        "are kept, and it is the study's first trial (default small)")
    p.add_argument("--epochs", type=int, help="maximum epochs per trial (default: the preset's)")
    p.add_argument("--seed", type=int, help="training seed of every trial and the sampler's (default: the preset's)")
    p.add_argument("--days", type=int, default=2000, help="trading days of history per symbol (default 2000)")
    p.add_argument("--end", help="last date the study may read (YYYY-MM-DD; default: the end of the data): keep "
                                 "the period you will test on after it")
    p.add_argument("--source", default="sample", choices=["sample", "csv", "parquet", "yahoo"])
    p.add_argument("--data", help="file or folder for --source csv/parquet")
    p.add_argument("--with-volume", action="store_true", help="add volume features (needs a source with volume)")
    p.add_argument("--study-name", help="default: the symbols and the base preset, e.g. AAPL-small")
    p.add_argument("--storage", help="the study's SQLite file (default models/tuning/STUDY.db)")
    p.add_argument("--out", help="the best configuration's preset file (default models/tuning/STUDY.json)")
    p.add_argument("--plot", help="the study's figure (default models/tuning/STUDY.png)")
    p.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    p.add_argument("--ray", nargs="?", const="local", default="local", metavar="ADDRESS",
                   help="the Ray cluster to run the trials on (HOST:PORT, auto, ray://HOST:PORT); default a local "
                        "one sized to this machine")
    p.set_defaults(func=_cmd_tune)


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{_SHORT[k]} {v:.2g}" if isinstance(v, float) and k == "learning_rate" else f"{_SHORT[k]} {v}"
                     for k, v in params.items())


def _printer(event: str, data: dict[str, Any]) -> None:
    if event == "study":
        what = "resuming study" if data["finished"] or data["interrupted"] else "study"
        print(f"{what} {data['name']} ({data['storage']}): {data['finished']}/{data['trials']} trials finished"
              + (f"; {data['interrupted']} interrupted trial(s) marked failed" if data["interrupted"] else ""),
              flush=True)
        return
    head = f"trial {data['number']} [{data['finished']}/{data['trials']}]"
    if data["state"] == "complete":
        status = f"val CRPS {data['value']:.4f}"
    elif data["state"] == "pruned":
        status = f"pruned at {data['at']}"
    else:
        status = f"failed ({data['error']})"
    print(f"{head}  {status}  ({_describe(data['params'])})  {data['seconds']:.1f}s", flush=True)


def _cmd_tune(args: argparse.Namespace) -> int:
    from ..config import TrainConfig, preset
    from ..data.universe import parse_symbols

    symbols = parse_symbols(args.symbols)
    model_config, train_config = preset(args.preset)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    train_config = TrainConfig.from_dict({**train_config.to_dict(), **overrides})
    if args.trials < 1:
        raise CLIError(f"--trials {args.trials} is invalid: must be a positive number of trials")
    if args.days < 1:
        raise CLIError(f"--days {args.days} is invalid: must be a positive number of trading days")
    if args.source in ("csv", "parquet") and not args.data:
        raise CLIError(f"--source {args.source} needs --data PATH (a file, or a folder with one file per symbol)")
    if args.end is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", args.end):
        raise CLIError(f"--end {args.end!r} is not a date: use YYYY-MM-DD")
    base = Path(args.preset).stem if args.preset.endswith(".json") else args.preset
    name = args.study_name or f"{'-'.join(symbols)[:60]}-{base}"
    folder = Path("models/tuning")
    storage = Path(args.storage or folder / f"{name}.db")
    out, plot = args.out or str(folder / f"{name}.json"), args.plot or str(folder / f"{name}.png")
    for path, flag in ((str(storage), "--storage"), (out, "--out"), (plot, "--plot")):
        check_output_file(path, flag)
    from ..train.distributed import import_ray
    from ..tune import (
        TuneSpec,
        base_params,
        import_optuna,
        load_tuning_prices,
        plot_study,
        run_study,
        write_best_preset,
    )

    try:
        import_optuna()
        import_ray()
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    base_params(model_config, train_config)              # a preset outside the space: one line, before any work
    prices = load_tuning_prices(symbols, args.days, args.end, args.source, args.data, args.with_volume)
    spec = TuneSpec(symbols=symbols, prices=prices, base_model=model_config, base_train=train_config,
                    trials=args.trials, study_name=name, storage=storage, include_volume=args.with_volume,
                    about={"symbols": symbols, "days": args.days, "end": args.end, "base_preset": args.preset,
                           "data_end": {s: str(f.index[-1].date()) for s, f in prices.items()}})
    result = run_study(spec, None if args.ray == "local" else args.ray, progress=_printer, timeout=args.timeout)
    best = result["best"]
    if best is None:
        raise CLIError(f"no trial of study {name} completed (all pruned or failed); see the lines above")
    base_value = best["base_value"]
    compare = ""
    if base_value is not None:
        change = (best["value"] - base_value) / base_value * 100
        compare = (f"; the base preset ({args.preset}, trial 0): {base_value:.4f}, "
                   + (f"{-change:.2f}% lower" if change < 0 else "not beaten"))
    print(f"\nbest: trial {best['number']}, val CRPS {best['value']:.4f} ({_describe(best['params'])}){compare}")
    print(f"{result['finished']}/{args.trials} trials finished in {result['seconds']:.1f}s")
    write_best_preset(out, spec, best)
    print(f"preset written to {out}; train with: mambacast train --symbols {','.join(symbols)} --preset {out}")
    drawn = plot_study(storage, name, plot)
    print(f"study plot: {drawn}" if drawn else "study plot: not drawn (needs matplotlib and two complete trials)")
    return 0
