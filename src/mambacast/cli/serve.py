"""The production commands of the `mambacast` CLI: `serve`, `models list|promote|rollback`, `monitor`.

A user mistake raises CLIError (or the library's ValueError), which `cli.main` prints as one line with
exit status 2, like every other command's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
from pathlib import Path
from typing import Any

from .common import CLIError

__all__ = ["add_service_commands", "DEFAULT_LOG"]

#: the forecast log's default place, inside the model store it monitors
DEFAULT_LOG = "monitor/forecasts.sqlite"
_SOURCES = ["sample", "csv", "parquet", "yahoo"]
_ENV = "MAMBACAST_SERVE_"


# ---- serve ---------------------------------------------------------------------------------------
def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP forecast service (needs the serve extra)",
                       description="Serve forecasts over HTTP (FastAPI + uvicorn): POST /v1/forecast, "
                                   "POST /v1/probabilities, GET /v1/models, /healthz, /readyz, /metrics; "
                                   "OpenAPI docs at /docs. See docs/serving.md.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--save-dir", default="models/mamba", help="model store folder (default models/mamba)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (default 1); each loads every model and has --threads inference threads")
    p.add_argument("--threads", type=int, default=1,
                   help="inference threads per process (default 1: forecasts hold Python's GIL, so more threads in "
                        "one process contend for it; use --workers for more cores)")
    p.add_argument("--model", choices=["auto", "symbol", "global"], default="auto",
                   help="which stored model answers, as for `mambacast predict` (default auto)")
    p.add_argument("--source", default="sample", choices=_SOURCES,
                   help="where prices come from when a request sends none (default sample)")
    p.add_argument("--data", help="file or folder for --source csv/parquet")
    p.add_argument("--log", help=f"SQLite forecast log for live monitoring (default SAVE_DIR/{DEFAULT_LOG})")
    p.add_argument("--log-url", help="the forecast log as a SQLAlchemy URL instead (sqlite:///path, "
                                     "postgresql://user@host/db with its driver installed)")
    p.add_argument("--no-log", action="store_true", help="do not log served forecasts")
    p.add_argument("--reload-interval", type=float, default=1.0,
                   help="seconds between checks of the store for a promoted or retrained model (0: never)")
    g = p.add_argument_group("champion / challenger (docs/serving.md)")
    g.add_argument("--challenger", action="append", default=[], metavar="SYMBOL=VERSION",
                   help="a stored version (mambacast models list) forecasting SYMBOL's requests beside the current "
                        "model, logged and scored in the shadow; repeatable; _GLOBAL=VERSION challenges every symbol")
    g.add_argument("--challenger-global", action="store_true",
                   help="the store's global model challenges every symbol's own model (with --model symbol)")
    g.add_argument("--challenger-traffic", type=float, default=0.0, metavar="FRACTION",
                   help="share of requests the challenger serves, 0-1 (default 0: shadow only); chosen per request "
                        "id (X-Request-ID header, else a random one)")
    g.add_argument("--challenger-seed", type=int, default=0, help="seed of the traffic split (default 0)")
    p.set_defaults(func=_cmd_serve)


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as exc:
            raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (port in use? pick another "
                             "with --port)") from None


def _challenger(args: argparse.Namespace) -> Any:
    """The ChallengerConfig the flags describe (None without a challenger); CLIError with one line if invalid."""
    from ..serve.challenger import ChallengerConfig, parse_challenger
    from ..store import ModelStore

    versions: dict[str, str] = {}
    for text in args.challenger:
        symbol, version = parse_challenger(text)
        if symbol in versions:
            raise CLIError(f"--challenger names {symbol} twice: one challenger per symbol")
        versions[symbol] = version
    config = ChallengerConfig(versions=versions, global_model=args.challenger_global,
                              traffic=args.challenger_traffic, seed=args.challenger_seed)
    config.check(ModelStore(args.save_dir), args.model)     # ValueError: printed as one line by cli.main
    return config if versions or args.challenger_global else None


def _serve_options(args: argparse.Namespace) -> dict[str, Any]:
    from ..store import ModelStore

    if not 1 <= args.port <= 65535:
        raise CLIError(f"--port {args.port} is invalid: must be 1-65535")
    if args.workers < 1:
        raise CLIError(f"--workers {args.workers} is invalid: must be 1 or more")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads {args.threads} is invalid: must be 1 or more")
    if args.reload_interval < 0:
        raise CLIError(f"--reload-interval {args.reload_interval} is invalid: must be 0 (never) or more seconds")
    if args.source in ("csv", "parquet") and not args.data:
        raise CLIError(f"--source {args.source} needs --data PATH")
    if not Path(args.save_dir).is_dir():
        raise CLIError(f"model store {args.save_dir} does not exist (train first: mambacast train --save-dir ...)")
    if not ModelStore(args.save_dir).symbols():
        raise CLIError(f"model store {args.save_dir} has no trained model (train first: mambacast train ...)")
    target = _log_target(args)                 # checked with --no-log too: conflicting flags are a mistake
    log_path = None if args.no_log else target
    if log_path is not None:
        _open_log(log_path).close()            # a bad URL or unreachable database: one line now, not per worker
    return {"store_dir": args.save_dir, "source": args.source, "data": args.data, "model": args.model,
            "max_workers": args.threads, "log_path": log_path, "reload_interval_s": args.reload_interval,
            "challenger": _challenger(args)}


def _log_target(args: argparse.Namespace) -> str:
    """The forecast log's path or URL from --log / --log-url (default: inside the model store)."""
    given = [flag for flag, value in (("--log", args.log), ("--log-url", args.log_url),
                                      ("--no-log", getattr(args, "no_log", False))) if value]
    if len(given) > 1:
        raise CLIError(f"{' and '.join(given)} cannot be combined: pick one")
    if args.log_url is not None and "://" not in args.log_url:
        raise CLIError(f"--log-url {args.log_url!r} is not a URL: use e.g. sqlite:///path/forecasts.sqlite or "
                       "postgresql://user@host/db (or --log PATH for a SQLite file)")
    return args.log_url or args.log or str(Path(args.save_dir) / DEFAULT_LOG)


def _open_log(target: str) -> Any:
    try:
        from ..monitor import ForecastLog

        return ForecastLog(target)
    except ImportError as exc:
        raise CLIError(str(exc)) from None


def app_from_env() -> Any:
    """The app a `--workers N` server process builds (uvicorn's factory), from the options `serve` exported."""
    from ..serve.app import create_app
    from ..serve.challenger import ChallengerConfig

    def get(name: str) -> str | None:
        value = os.environ.get(_ENV + name.upper())
        return value or None

    threads, log_path, challenger = get("max_workers"), get("log_path"), get("challenger")
    return create_app(get("store_dir") or "models/mamba", source=get("source") or "sample", data=get("data"),
                      model=get("model") or "auto", max_workers=int(threads) if threads else 1,
                      log_path=log_path, reload_interval_s=float(get("reload_interval_s") or 1.0),
                      challenger=ChallengerConfig.from_dict(json.loads(challenger)) if challenger else None)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as exc:
        raise CLIError(f"mambacast serve needs the serve extra ({exc}): pip install 'mambacast[serve]'") from None
    options = _serve_options(args)
    _check_port(args.host, args.port)
    challenger = options["challenger"]
    print(f"serving {options['store_dir']} at http://{args.host}:{args.port} (API docs: /docs; "
          f"forecast log: {options['log_path'] or 'off'}; {args.workers} worker(s)"
          + (f"; challenger: {challenger.describe()}" if challenger else "") + ")", flush=True)
    if args.workers == 1:
        uvicorn.run(create_app(**options), host=args.host, port=args.port, log_level="warning")
    else:   # worker processes import the app: pass the options through the environment
        for key, value in options.items():
            if key == "challenger" and value is not None:
                value = json.dumps(value.to_dict())
            os.environ[_ENV + key.upper()] = "" if value is None else str(value)
        uvicorn.run("mambacast.cli.serve:app_from_env", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level="warning")
    return 0


# ---- models --------------------------------------------------------------------------------------
def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, promote and roll back stored model versions",
                       description="Every training run stores an immutable version beside the current model; "
                                   "promote makes a version current, rollback returns to the one before. A "
                                   "running `mambacast serve` switches within --reload-interval seconds.")
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("symbol", nargs="?", help="ticker (list: all symbols when omitted; _GLOBAL: the global model)")
    p.add_argument("version", nargs="?", help="version id, as `models list` prints it")
    p.add_argument("--save-dir", default="models/mamba", help="model store folder (default models/mamba)")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args: argparse.Namespace) -> int:
    from ..store import ModelStore
    from ..versions import ModelVersions

    store = ModelStore(args.save_dir)
    versions = ModelVersions(store)
    if args.action != "list" and not args.symbol:
        raise CLIError(f"models {args.action} needs a SYMBOL")
    if args.action == "promote" and not args.version:
        raise CLIError("models promote needs SYMBOL VERSION (see: mambacast models list SYMBOL)")
    if args.action == "promote":
        previous = versions.promote(args.symbol, args.version)
        print(f"{args.symbol}: {args.version} is current (was {previous or 'none'})")
        return 0
    if args.action == "rollback":
        now = versions.rollback(args.symbol, args.version)
        print(f"{args.symbol}: rolled back to {now}")
        return 0
    symbols = [args.symbol] if args.symbol else store.symbols()
    if not symbols:
        raise CLIError(f"no trained models in {args.save_dir}")
    rows = [("symbol", "version", "trained", "val crps", "data hash", "current")]
    for symbol in symbols:
        for v in versions.list(symbol):
            rows.append((symbol, v.version, v.training_date, f"{v.best_val_crps:.4f}" if v.best_val_crps else "-",
                         (v.data_hash or "-")[:12], "*" if v.current else ""))
    if len(rows) == 1:
        raise CLIError(f"{args.symbol}: no versions in {args.save_dir}")
    _print_table(rows)
    return 0


# ---- monitor -------------------------------------------------------------------------------------
def _add_monitor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("monitor", help="score served forecasts against later prices and report live accuracy",
                       description="Score the forecasts `mambacast serve` logged once their horizon's price is in "
                                   "--source/--data (CRPS, 80%% interval coverage, Brier of served probabilities, "
                                   "squared error vs no change) and report them per symbol, version and horizon.")
    p.add_argument("--log", help=f"the forecast log (default SAVE_DIR/{DEFAULT_LOG})")
    p.add_argument("--log-url", help="the forecast log as a SQLAlchemy URL (as given to serve --log-url)")
    p.add_argument("--save-dir", default="models/mamba", help="model store folder the log is in by default")
    p.add_argument("--score", action="store_true", help="score what has an outcome in the price source first")
    p.add_argument("--source", default="sample", choices=_SOURCES, help="price source with the later prices")
    p.add_argument("--data", help="file or folder for --source csv/parquet")
    p.add_argument("--report", action="store_true", help="print the accuracy table")
    p.add_argument("--out", help="also write the table as CSV (and a coverage plot with matplotlib) to this folder")
    p.set_defaults(func=_cmd_monitor)


def _cmd_monitor(args: argparse.Namespace) -> int:
    from ..data.sources import load_prices
    from ..monitor import REPORT_COLUMNS

    target = _log_target(args)
    if args.log_url is None and not Path(target).exists():
        raise CLIError(f"forecast log {target} does not exist (mambacast serve writes it; see --log)")
    if not (args.score or args.report or args.out):
        raise CLIError("say what to do: --score, --report and/or --out DIR")
    if args.score and args.source in ("csv", "parquet") and not args.data:
        raise CLIError(f"--source {args.source} needs --data PATH")
    flog = _open_log(target)
    if args.score:
        n = flog.score(lambda symbol: load_prices(symbol, days=None, source=args.source, path=args.data))
        print(f"scored {n} forecast horizon(s), each with its shadow baselines")
    rows = flog.report()
    table = [REPORT_COLUMNS] + [tuple(_fmt(r[c]) for c in REPORT_COLUMNS) for r in rows]
    if args.report:
        _print_table(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "monitor.csv", "w", newline="") as f:
            csv.writer(f).writerows(table)
        print(f"report written to {out / 'monitor.csv'}" + _coverage_plot(rows, out))
    return 0


def _coverage_plot(rows: list[dict[str, Any]], out: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return " (no plot: matplotlib is not installed)"
    scored = [r for r in rows if r["scored"]]
    if not scored:
        return " (no plot: nothing scored yet)"
    fig, ax = plt.subplots(figsize=(max(4, len(scored) * 0.6), 3.5))
    ax.bar(range(len(scored)), [r["coverage80"] for r in scored])
    ax.axhspan(0.7, 0.9, color="green", alpha=0.15, label="70-90%")
    ax.axhline(0.8, color="k", lw=0.8)
    ax.set_xticks(range(len(scored)), [f"{r['symbol']} {r['horizon']}d" for r in scored], rotation=60, fontsize=7)
    ax.set_ylabel("80% interval coverage")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "coverage.png", dpi=100)
    plt.close(fig)
    return f" and {out / 'coverage.png'}"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _print_table(rows: list[tuple]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def add_service_commands(sub: argparse._SubParsersAction) -> None:
    """Register `serve`, `models` and `monitor` on the main parser's subcommands."""
    _add_serve(sub)
    _add_models(sub)
    _add_monitor(sub)
