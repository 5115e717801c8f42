"""Results of a walk-forward backtest (`evaluate.backtest`): `SymbolBacktest`, one symbol's out-of-sample forecasts
and realised returns, and `BacktestResult`, every symbol's with the metric, DM and desk tables, warnings and timing,
and its serialisation (`to_dict` for metrics.json, `save` for the JSON and CSV files, `forecasts_frame`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .baselines import Forecast

if TYPE_CHECKING:
    from .backtest import BacktestConfig

__all__ = ["SymbolBacktest", "BacktestResult"]


@dataclass(eq=False)
class SymbolBacktest:
    """Out-of-sample forecasts of one symbol.

    dates (n_days,) index of the closes; closes (n_days,); origins (n_origins,) indices into closes;
    realised (n_origins, H) log-returns, NaN where `origin + h` is past the data; forecasts {name: Forecast with
    arrays (n_origins, H)}; blocks: one dict per refit (training range, origin range, fit seconds and info);
    insample (a, c): the first training window `closes[a : c + 1]`, the MASE scale.
    """

    symbol: str
    dates: pd.Index
    closes: np.ndarray
    horizons: list[int]
    origins: np.ndarray
    realised: np.ndarray
    forecasts: dict[str, Forecast]
    blocks: list[dict[str, Any]]
    insample: tuple[int, int]

    def origin_dates(self) -> pd.Index:
        return self.dates[self.origins]

    def label(self, row: int) -> str:
        v = self.dates[row]
        return v.date().isoformat() if isinstance(v, pd.Timestamp) else str(v)

    def valid(self, j: int) -> np.ndarray:
        """Mask of origins whose horizon-`j` target is realised."""
        return ~np.isnan(self.realised[:, j])


@dataclass(eq=False)
class BacktestResult:
    """Everything a backtest produced: per-symbol forecasts, the metric and DM tables, warnings, timing.

    metrics: one row per (symbol, forecaster, horizon), symbol "ALL" for the pooled rows; columns are the keys of
    `evaluate_forecasts` plus `ret_mse`, `oos_r2` (1 - MSE / MSE of the zero forecast) and `ret_crps`.
    dm: one row per (symbol, horizon, other forecaster, loss) with `stat` (negative: the reference has the lower
    loss), `p_value` (two-sided), `p_better` / `p_worse` (one-sided: reference lower / higher loss), `loss_ratio`
    (mean loss of the reference / of the other), `n`. With several references (model seeds), one set of rows per
    reference.
    tables: what an options desk reads (`evaluate.desk`): "brier", "brier_dm", "reliability", "coverage_by_year",
    "pit", and with several model seeds "seed_spread".
    """

    config: BacktestConfig
    symbols: dict[str, SymbolBacktest]
    metrics: pd.DataFrame
    dm: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def forecaster_names(self) -> list[str]:
        return list(dict.fromkeys(self.metrics["forecaster"])) if len(self.metrics) else []

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: config, run info, every metric and DM row, refit blocks, warnings."""
        return {
            "config": asdict(self.config),
            "info": self.info,
            "seconds": self.seconds,
            "warnings": list(self.warnings),
            "symbols": {s: {"first_origin": r.label(int(r.origins[0])), "last_origin": r.label(int(r.origins[-1])),
                            "n_origins": int(r.origins.size), "days": int(r.closes.size),
                            "insample": [r.label(r.insample[0]), r.label(r.insample[1])], "blocks": r.blocks}
                        for s, r in self.symbols.items()},
            "metrics": _records(self.metrics),
            "dm": _records(self.dm),
            "desk": {name: _records(t) for name, t in self.tables.items()},
        }

    def forecasts_frame(self) -> pd.DataFrame:
        """Every forecast in long form: symbol, origin, forecaster, horizon, mean, scale, df, quantiles, realised."""
        frames = []
        for sym, r in self.symbols.items():
            for name, fc in r.forecasts.items():
                for j, h in enumerate(r.horizons):
                    d = {"symbol": sym, "origin": r.origin_dates(), "origin_price": r.closes[r.origins],
                         "forecaster": name, "horizon": h, "realised": r.realised[:, j], "mean": fc.mean[:, j]}
                    if fc.scale is not None:
                        d["scale"] = fc.scale[:, j]
                        d["df"] = fc.df[:, j] if fc.df is not None else np.inf
                    for q, v in (fc.quantiles or {}).items():
                        d[f"q{q:g}"] = v[:, j]
                    frames.append(pd.DataFrame(d))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def save(self, directory: str | Path, forecasts: bool = True) -> dict[str, Path]:
        """Write metrics.json (everything), metrics.csv, dm.csv, one CSV per desk table (brier.csv, brier_dm.csv,
        reliability.csv, coverage_by_year.csv, pit.csv, seed_spread.csv; keys "<name>_csv") and (optionally)
        forecasts.csv.gz."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "metrics.json", "metrics_csv": out / "metrics.csv", "dm_csv": out / "dm.csv"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=1, default=_json_default, allow_nan=True))
        self.metrics.to_csv(paths["metrics_csv"], index=False)
        self.dm.to_csv(paths["dm_csv"], index=False)
        for name, table in self.tables.items():
            paths[f"{name}_csv"] = out / f"{name}.csv"
            table.to_csv(paths[f"{name}_csv"], index=False)
        if forecasts:
            paths["forecasts_csv"] = out / "forecasts.csv.gz"
            self.forecasts_frame().to_csv(paths["forecasts_csv"], index=False, compression="gzip")
        return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, pd.Timestamp):
        return o.isoformat()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with NaN as None (JSON null)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]
