"""Walk-forward backtest: the model and the baselines forecast data they never saw, and are scored alike.

Protocol, per symbol (closes `p[0..n-1]`, horizons `h_1 < ... < h_H`, embargo `e = max(h)` by default):

* Forecast origins run from the first origin `s_0` (the `start` date, or `min_train_days - 1 + e`) to
  `n - 1 - h_1` (the last day whose shortest-horizon target is realised).
* They are cut into blocks of `refit_every` trading days. Before block `k`, which starts at origin `s_k`,
  every forecaster is refitted on the closes `p[a_k .. c_k]` with the cutoff `c_k = s_k - e`:
  the last training *target* (a return ending at `c_k` at the latest) is `e` days before the first origin.
  `a_k = 0` for an expanding window, `c_k + 1 - train_days` for a rolling one.
* Forecasts for the origins `o` of the block come from `predict_many(p[: o_last + 1], origins)` (features are
  causal, which `tests/evaluate/test_backtest.py` proves for every forecaster), or with `strict=True` from
  `predict(p[: o + 1])` one origin at a time.
* Every array a forecaster receives is a fresh read-only *copy* of the allowed prefix: it holds nothing past
  the cutoff (fit) or the last origin of the block (predict), and no `.base` leads back to the full series.
  Realised values `log(p[o + h] / p[o])` are computed here, never by a forecaster.

Scores (`evaluate.scoring`) per symbol, forecaster and horizon come from `evaluate.metrics.evaluate_forecasts`
(log-returns and prices: MAE, RMSE, MASE, direction accuracy and its binomial p, pinball, CRPS, coverage and width
of the 50/80/90% intervals, calibration); Diebold-Mariano (HLN) tests compare the reference forecaster (the
model) with every other on squared log-return error and on CRPS. Pooled rows (`symbol == "ALL"`) concatenate the
symbols; the pooled DM test averages the loss differential across the symbols present on each origin date.
Formulas and caveats are in docs/evaluation.md ("Backtest"). The results: `evaluate.results` (re-exported here).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from ..data.errors import InsufficientHistoryError
from ..data.quality import check_data_quality
from ..data.sources import as_price_frame
from .baselines import (
    Drift,
    Forecast,
    Forecaster,
    GarchT,
    HistoricalVolGaussian,
    Momentum,
    RandomWalk,
    stale_sample_start,
)
from .har import HarPool, HarT
from .panel import DatedForecaster, Panel
from .results import BacktestResult, SymbolBacktest
from .scoring import desk_score, leakage_warnings, score_symbols

__all__ = [
    "BASELINES",
    "BacktestConfig",
    "BacktestResult",
    "SymbolBacktest",
    "ProgressFn",
    "make_baselines",
    "model_names",
    "check_seeds",
    "dated_panel",
    "default_forecasters",
    "walk_forward",
    "run_backtest",
    "score_symbols",
    "desk_score",
    "leakage_warnings",
]

logger = logging.getLogger(__name__)

#: progress(event, data): events "symbol_start", "fit_start", "fit_end", "block_end", "symbol_end".
ProgressFn = Callable[[str, dict[str, Any]], None]
ForecasterFactory = Callable[[str], Sequence[Forecaster]]

#: Baselines by name (the `name` each reports), in the order tables show them.
BASELINES: dict[str, Callable[[], Forecaster]] = {
    "random_walk": RandomWalk,
    "drift": Drift,
    "momentum": Momentum,
    "hist_vol": HistoricalVolGaussian,
    "garch_t": GarchT,
    "har_t": HarT,  # without a panel: the per-symbol regression (default_forecasters passes the panel)
}


@dataclass(frozen=True)
class BacktestConfig:
    """How the walk-forward runs.

    horizons        forecast horizons in trading days
    refit_every     origins per block; every forecaster is refitted before each block
    window          "expanding" (train on all days up to the cutoff) or "rolling" (the last `train_days`)
    train_days      rolling window length (default 2000 days, as `mambacast train --days`); with an expanding
                    window, None (all history) or a cap on the history used at all (the first training window)
    min_train_days  fewest training days before the first origin's cutoff
    embargo         days between the last training target and the first origin of a block (default max(h))
    strict          predict one origin at a time from prices[:o + 1] (slow for the model; same numbers)
    reference       the forecaster DM-tested against every other (the model); tables show its comparisons
    references      several models DM-tested against every non-reference forecaster (one model per training
                    seed: "mamba_s42", "mamba_s7", ...); empty = (reference,). `reference` should be one of them
    """

    horizons: tuple[int, ...] = (1, 5, 10, 30)
    refit_every: int = 252
    window: str = "expanding"
    train_days: int | None = None
    min_train_days: int = 500
    embargo: int | None = None
    strict: bool = False
    reference: str = "mamba"
    references: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        refs = tuple(str(r) for r in self.references)
        if len(set(refs)) != len(refs):
            raise ValueError(f"references={list(refs)} is invalid: names must not repeat")
        object.__setattr__(self, "references", refs)
        hs = tuple(int(h) for h in self.horizons)
        if not hs or any(h < 1 for h in hs) or list(hs) != sorted(set(hs)):
            raise ValueError(f"horizons={list(self.horizons)} is invalid: pass increasing positive days, "
                             "e.g. 1,5,10,30")
        object.__setattr__(self, "horizons", hs)
        if self.window not in ("expanding", "rolling"):
            raise ValueError(f"window={self.window!r} is invalid: choose 'expanding' or 'rolling'")
        for name in ("refit_every", "min_train_days"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: must be a positive number of days")
        if self.train_days is not None and (not isinstance(self.train_days, int) or self.train_days < 3):
            raise ValueError(f"train_days={self.train_days!r} is invalid: must be at least 3 days")
        if self.window == "rolling" and self.train_days is None:
            object.__setattr__(self, "train_days", 2000)
        if self.embargo is not None and (not isinstance(self.embargo, int) or self.embargo < 0):
            raise ValueError(f"embargo={self.embargo!r} is invalid: must be >= 0 days")

    @property
    def reference_names(self) -> tuple[str, ...]:
        """The models DM-tested against the other forecasters: `references`, or (reference,)."""
        return self.references or (self.reference,)

    @property
    def embargo_days(self) -> int:
        return max(self.horizons) if self.embargo is None else int(self.embargo)


# ------------------------------------------------------------------------------------------ forecasters


def make_baselines(names: Sequence[str] | None = None, pool: HarPool | None = None,
                   symbol: str | None = None) -> list[Forecaster]:
    """Fresh baseline instances; `names` from `BASELINES` (default all, in table order).

    pool: the backtest's shared `HarPool` (panel of every symbol) for `har_t`, with this instance's `symbol`;
    without it `har_t` fits its regression on the symbol alone.
    """
    chosen = list(BASELINES) if names is None else list(names)
    unknown = [n for n in chosen if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
    return [HarT(pool, symbol) if n == "har_t" else BASELINES[n]() for n in chosen]


def model_names(seeds: Sequence[int] | None) -> list[str]:
    """Names of the model forecasters: ["mamba"] for no or one seed, ["mamba_s42", "mamba_s7", ...] for several."""
    seeds = list(seeds or [])
    return [f"mamba_s{s}" for s in seeds] if len(seeds) > 1 else ["mamba"]


def check_seeds(seeds: Sequence[int] | None) -> list[int]:
    """Seeds as a list of distinct non-negative integers (ValueError naming the problem otherwise)."""
    out = [] if seeds is None else list(seeds)
    if any(not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 0 for s in out):
        raise ValueError(f"seeds must be non-negative integers, got {out}")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must not repeat, got {out}")
    return [int(s) for s in out]


def default_forecasters(model_config: Any = None, train_config: Any = None, baselines: Sequence[str] | None = None,
                        include_model: bool = True, device: str = "cpu",
                        on_epoch: Callable[[str, int, int, dict[str, float]], None] | None = None,
                        panel: Panel | None = None, seeds: Sequence[int] | None = None,
                        model: str = "global") -> ForecasterFactory:
    """Factory `symbol -> [model per seed, *baselines]`, fresh instances per symbol.

    `on_epoch(symbol, epoch, epochs, logs)` is forwarded to the model's training loop (progress display).
    panel: every symbol's dated prices, for the pooled `har_t` (one regression per refit date, shared by the
    symbols through one `HarPool`) and the global model; None = per-symbol HAR and per-symbol models.
    seeds: one model per seed, trained with `dataclasses.replace(train_config, seed=s)` and named by
    `model_names(seeds)` ("mamba" for one seed); None = one model with the train config's seed.
    model: "global" (one network per refit date trained on every panel symbol, `GlobalMambaForecaster`) or
    "symbol" (one network per symbol and refit, `MambaForecaster`, the guide's per-symbol models).
    """
    if model not in ("global", "symbol"):
        raise ValueError(f"model={model!r} is invalid: choose global or symbol")
    seeds = check_seeds(seeds)
    chosen = list(BASELINES) if baselines is None else list(baselines)
    make_baselines(chosen)  # fail early on an unknown name
    pool = HarPool(panel) if panel is not None and "har_t" in chosen else None
    names = model_names(seeds)
    configs = []
    for seed in seeds or [None]:
        tc = train_config
        if seed is not None:
            from ..config import TrainConfig

            tc = replace(train_config or TrainConfig.small(), seed=seed)
        configs.append(tc)
    pooled = []
    if include_model and model == "global" and panel is not None:
        from .model import global_model_factory

        hook = None if on_epoch is None else (lambda e, n, logs: on_epoch("GLOBAL", e, n, logs))
        pooled = [global_model_factory(panel, model_config, tc, device=device, on_epoch=hook) for tc in configs]

    def factory(symbol: str) -> list[Forecaster]:
        out: list[Forecaster] = []
        if include_model:
            from .model import MambaForecaster

            hook = None if on_epoch is None else (lambda e, n, logs: on_epoch(symbol, e, n, logs))
            for k, (name, tc) in enumerate(zip(names, configs, strict=True)):
                f = pooled[k](symbol) if pooled else MambaForecaster(model_config, tc, symbol=symbol, device=device,
                                                                     on_epoch=hook)
                f.name = name  # type: ignore[misc]  # instance attribute: one name per seed
                out.append(f)
        return out + make_baselines(chosen, pool, symbol)

    return factory


def dated_panel(prices: Mapping[str, Any]) -> Panel | None:
    """A `Panel` of the prices when every one has dates (a DatetimeIndex), else None."""
    frames = {s: as_price_frame(p) for s, p in prices.items()}
    if frames and all(isinstance(f.index, pd.DatetimeIndex) for f in frames.values()):
        return Panel(frames)
    return None


# ---------------------------------------------------------------------------------------------- harness


def _readonly_copy(a: np.ndarray) -> np.ndarray:
    """A new array (no `.base` into the full series) that cannot be written to."""
    c = np.array(a, dtype=np.float64, copy=True)
    c.flags.writeable = False
    return c


def _start_index(dates: pd.Index, start: Any) -> int | None:
    if start is None:
        return None
    if isinstance(start, (int, np.integer)) and not isinstance(start, bool):
        return int(start)
    if not isinstance(dates, pd.DatetimeIndex):
        raise ValueError(f"start={start!r} is a date but the prices have no dates; pass an integer origin index")
    return int(dates.searchsorted(pd.Timestamp(start)))


def _normalise(forecast: Forecast, n: int, n_h: int, name: str) -> dict[str, Any]:
    """Arrays of a many-origin forecast, df filled with inf (Gaussian) where the law has a scale but no df."""
    if forecast.mean.shape != (n, n_h):
        raise ValueError(f"{name}.predict_many returned mean of shape {forecast.mean.shape}, expected {(n, n_h)}")
    quantiles = forecast.quantiles
    if quantiles is None and forecast.scale is not None:
        law = Forecast.from_location_scale(forecast.horizons, forecast.mean, forecast.scale, forecast.df)
        quantiles = law.quantiles
    df = None
    if forecast.scale is not None:
        df = forecast.df if forecast.df is not None else np.full((n, n_h), np.inf)
    return {"mean": forecast.mean, "scale": forecast.scale, "df": df, "quantiles": quantiles}


def _concat(parts: list[dict[str, Any]], horizons: list[int], name: str) -> Forecast:
    def cat(key: str) -> np.ndarray | None:
        vals = [p[key] for p in parts]
        if all(v is None for v in vals):
            return None
        if any(v is None for v in vals):
            raise ValueError(f"{name}: some refits returned a {key} and others not")
        return np.concatenate(vals)

    levels = [tuple(p["quantiles"]) if p["quantiles"] else () for p in parts]
    quantiles = None
    if levels[0] and all(lv == levels[0] for lv in levels):
        quantiles = {q: np.concatenate([p["quantiles"][q] for p in parts]) for q in levels[0]}
    return Forecast(horizons, cat("mean"), quantiles, cat("scale"), cat("df"))


def checked_prices(prices: Mapping[str, Any], end: Any = None) -> dict[str, pd.DataFrame]:
    """The rows a backtest reads, checked and cleaned up front: each symbol's prices up to `end`, through
    `check_data_quality` (what `mambacast data check --days all` reports on the same rows; a failure raises
    `DataQualityError` naming the symbol), with missing closes forward-filled as training fills them and rows
    before the first price dropped.

    A stale-quote stretch in the first half of the history (RRC's 1990-92 closes, 70-90% unchanged days) is cut
    off with a warning before the check: the baselines never fit on it (`stale_sample_start`) and the origins
    lie long after it, so only the rows no forecaster uses are dropped. A stale stretch later on still fails."""
    out = {}
    for symbol, p in prices.items():
        frame = as_price_frame(p)
        frame.attrs.setdefault("symbol", symbol)
        frame = _cut_at(frame, end)
        closes = frame["close"].to_numpy(np.float64)
        known = np.isfinite(closes) & (closes > 0)
        t0 = stale_sample_start(np.log(closes[known])) if known.all() else 0
        if 0 < t0 < len(frame) // 2:
            last = frame.index[t0 - 1]
            logger.warning("%s: the first %d rows (to %s) are stale quotes; the backtest reads the rows after them",
                           symbol, t0, last.date() if isinstance(last, pd.Timestamp) else last)
            frame = frame.iloc[t0:]
        check_data_quality(frame, symbol)
        if frame["close"].isna().any():
            frame = frame.loc[frame["close"].first_valid_index():].copy()
            frame["close"] = frame["close"].ffill()
        out[symbol] = frame
    return out


def _cut_at(frame: pd.DataFrame, end: Any) -> pd.DataFrame:
    """The rows up to `end`: a date for a dated index, else an integer index; None keeps all."""
    if end is None:
        return frame
    return frame.loc[: pd.Timestamp(end)] if isinstance(frame.index, pd.DatetimeIndex) else frame.iloc[: int(end) + 1]


def _backtest_frame(symbol: str, prices: Any, end: Any) -> pd.DataFrame:
    """The symbol's price frame up to `end` (a date, or an integer index), its closes checked finite and > 0."""
    frame = _cut_at(as_price_frame(prices), end)
    closes = frame["close"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(closes)) or np.any(closes <= 0):
        raise ValueError(f"{symbol}: closes must be finite and > 0 (clean the data: mambacast data check)")
    return frame


def _origin_range(symbol: str, dates: pd.Index, config: BacktestConfig, start: Any, warn: bool) -> tuple[int, int]:
    """Indices of the first and last forecast origin over `dates`; raises `InsufficientHistoryError` when none is
    left. With `warn`, logs where a `start` too early for `min_train_days` moves the first origin."""
    n, emb = len(dates), config.embargo_days
    earliest = config.min_train_days - 1 + emb  # first origin with min_train_days of training closes
    s0 = _start_index(dates, start)
    if s0 is None:
        s0 = earliest
    elif s0 < earliest:
        if warn:
            logger.warning("%s: start leaves %d training days before the embargo; moving the first origin to %s "
                           "(min_train_days=%d)", symbol, max(s0 - emb + 1, 0), dates[min(earliest, n - 1)],
                           config.min_train_days)
        s0 = earliest
    last = n - 1 - config.horizons[0]
    if s0 > last:
        span = f" ({dates[0]:%Y-%m-%d}..{dates[-1]:%Y-%m-%d})" if isinstance(dates, pd.DatetimeIndex) and n else ""
        raise InsufficientHistoryError(
            f"{symbol}: {n} days{span} leave no forecast origin: the first origin needs {earliest + 1} days "
            f"(min_train_days {config.min_train_days} + embargo {emb}) and start, and the last one "
            f"{config.horizons[0]} more days after it; load more history or move --start earlier")
    return s0, last


def walk_forward(symbol: str, prices: Any, forecasters: Sequence[Forecaster], config: BacktestConfig | None = None,
                 start: Any = None, end: Any = None, progress: ProgressFn | None = None) -> SymbolBacktest:
    """Walk-forward forecasts of one symbol by every forecaster (see the module docstring for the protocol).

    prices: frame with `close`, Series or array of closes (n_days,); start: first origin (date, or integer index);
    end: last date (or index) of data used at all. Raises `InsufficientHistoryError` when no origin is left.
    """
    config = config or BacktestConfig()
    frame = _backtest_frame(symbol, prices, end)
    closes = frame["close"].to_numpy(dtype=np.float64)
    dates, n = frame.index, closes.size
    horizons, emb = list(config.horizons), config.embargo_days
    names = [f.name for f in forecasters]
    if len(set(names)) != len(names):
        raise ValueError(f"forecaster names must be unique, got {names}")
    s0, last = _origin_range(symbol, dates, config, start, warn=True)
    starts = list(range(s0, last + 1, config.refit_every))
    origins = np.arange(s0, last + 1)
    realised = np.full((origins.size, len(horizons)), np.nan)
    log_c = np.log(closes)
    for j, h in enumerate(horizons):
        ok = origins + h <= n - 1
        realised[ok, j] = log_c[origins[ok] + h] - log_c[origins[ok]]

    emit = progress or (lambda event, data: None)
    emit("symbol_start", {"symbol": symbol, "n_blocks": len(starts), "n_origins": int(origins.size),
                          "first_origin": str(dates[s0]), "last_origin": str(dates[last])})
    parts: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    blocks: list[dict[str, Any]] = []
    insample = (0, 0)
    for k, b0 in enumerate(starts):
        t_block = time.perf_counter()
        b1 = min(b0 + config.refit_every - 1, last)
        cutoff = b0 - emb
        a = 0
        if config.train_days is not None:
            a = max(0, cutoff + 1 - config.train_days)
            if config.window == "expanding" and k > 0:
                a = blocks[0]["train_start_index"]  # the cap applies to the first window; later ones expand
        if k == 0:
            insample = (a, cutoff)
        train = _readonly_copy(closes[a: cutoff + 1])
        block_origins = np.arange(b0, b1 + 1)
        info: dict[str, Any] = {"block": k, "train_start_index": a, "train_end_index": cutoff,
                                "train_start": str(dates[a]), "train_end": str(dates[cutoff]),
                                "first_origin": str(dates[b0]), "last_origin": str(dates[b1]),
                                "n_origins": int(block_origins.size), "fit_seconds": {}, "predict_seconds": {},
                                "fit_info": {}}
        for f in forecasters:
            emit("fit_start", {"symbol": symbol, "block": k, "n_blocks": len(starts), "forecaster": f.name,
                               "train_days": int(train.size)})
            t0 = time.perf_counter()
            if isinstance(f, DatedForecaster) and isinstance(dates, pd.DatetimeIndex):
                f.fit_dated(train, dates[a: cutoff + 1])  # a pooled forecaster: other symbols up to this day
            else:
                f.fit(train)
            info["fit_seconds"][f.name] = time.perf_counter() - t0
            if getattr(f, "fit_info_", None):
                info["fit_info"][f.name] = dict(f.fit_info_)  # type: ignore[attr-defined]
            emit("fit_end", {"symbol": symbol, "block": k, "n_blocks": len(starts), "forecaster": f.name,
                             "seconds": info["fit_seconds"][f.name]})
            t0 = time.perf_counter()
            if config.strict:
                fc = Forecast.stack([f.predict(_readonly_copy(closes[: o + 1]), horizons) for o in block_origins])
            else:
                fc = f.predict_many(_readonly_copy(closes[: b1 + 1]), block_origins, horizons)
            info["predict_seconds"][f.name] = time.perf_counter() - t0
            parts[f.name].append(_normalise(fc, block_origins.size, len(horizons), f.name))
        info["seconds"] = time.perf_counter() - t_block
        blocks.append(info)
        logger.info("%s: block %d/%d (origins %s..%s, trained on %s..%s) in %.1fs", symbol, k + 1, len(starts),
                    info["first_origin"], info["last_origin"], info["train_start"], info["train_end"], info["seconds"])
        emit("block_end", {"symbol": symbol, "block": k, "n_blocks": len(starts), "seconds": info["seconds"]})
    forecasts = {name: _concat(parts[name], horizons, name) for name in names}
    return SymbolBacktest(symbol, dates, closes, horizons, origins, realised, forecasts, blocks, insample)


def run_backtest(prices: Mapping[str, Any], forecasters: ForecasterFactory | Sequence[Forecaster] | None = None,
                 config: BacktestConfig | None = None, start: Any = None, end: Any = None,
                 progress: ProgressFn | None = None) -> BacktestResult:
    """Walk-forward backtest of every symbol in `prices` ({symbol: closes}), then the metric and DM tables.

    `forecasters`: a factory `symbol -> [forecaster, ...]` (fresh instances per symbol; default: the Mamba model
    with the small preset and every baseline), or one list reused for every symbol (each block refits it).
    """
    config = config or BacktestConfig()
    # Every symbol's data and origins are checked before anything is fitted: a symbol without a forecast origin
    # would otherwise stop the run only when its turn came, after the others' refits (with a global model, after
    # all of its training).
    for symbol, p in prices.items():
        _origin_range(symbol, _backtest_frame(symbol, p, end).index, config, start, warn=False)
    factory: ForecasterFactory
    if forecasters is None:
        factory = default_forecasters(panel=dated_panel(prices))
    elif callable(forecasters):
        factory = forecasters
    else:
        fixed = list(forecasters)
        factory = lambda symbol: fixed  # noqa: E731
    t0 = time.perf_counter()
    results: dict[str, SymbolBacktest] = {}
    for i, (symbol, p) in enumerate(prices.items()):
        t_sym = time.perf_counter()
        results[symbol] = walk_forward(symbol, p, factory(symbol), config, start, end, progress)
        if progress:
            progress("symbol_end", {"symbol": symbol, "index": i, "n_symbols": len(prices),
                                    "seconds": time.perf_counter() - t_sym})
    metrics, dm = score_symbols(results, config)
    result = BacktestResult(config, results, metrics, dm, seconds=time.perf_counter() - t0,
                            tables=desk_score(results, config, dm))
    result.warnings = leakage_warnings(metrics)
    for w in result.warnings:
        logger.warning(w)
    return result
