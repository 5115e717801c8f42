"""Evaluation: forecast metrics and tests (`metrics`), baseline forecasters (`baselines`, the pooled HAR-t in
`har`), the Mamba models behind the same interface (`model.MambaForecaster` and `model.GlobalMambaForecaster`,
imported lazily: they need torch), the walk-forward backtest (`backtest`, pooled fits through `panel`, its
results in `results`) and what an options desk reads (`desk`)."""

from .backtest import (
    BASELINES,
    BacktestConfig,
    BacktestResult,
    SymbolBacktest,
    default_forecasters,
    leakage_warnings,
    make_baselines,
    run_backtest,
    score_symbols,
    walk_forward,
)
from .baselines import (
    DEFAULT_QUANTILES,
    BaseForecaster,
    Drift,
    Forecast,
    Forecaster,
    GarchT,
    HistoricalVolGaussian,
    Momentum,
    RandomWalk,
    momentum_log_returns,
)
from .har import HarPool, HarT
from .metrics import (
    INTERVALS,
    calibration_curve,
    crps_ensemble,
    crps_from_quantiles,
    crps_gaussian,
    crps_student_t,
    diebold_mariano,
    direction_accuracy,
    direction_counts,
    evaluate_forecasts,
    interval_coverage,
    mae,
    mase,
    pinball_loss,
    pit_values,
    rmse,
)
from .panel import Panel

__all__ = [
    "BASELINES",
    "BacktestConfig",
    "BacktestResult",
    "SymbolBacktest",
    "default_forecasters",
    "leakage_warnings",
    "make_baselines",
    "run_backtest",
    "score_symbols",
    "walk_forward",
    "MambaForecaster",
    "GlobalMambaForecaster",
    "HarPool",
    "HarT",
    "Panel",
    "DEFAULT_QUANTILES",
    "INTERVALS",
    "BaseForecaster",
    "Drift",
    "Forecast",
    "Forecaster",
    "GarchT",
    "HistoricalVolGaussian",
    "Momentum",
    "RandomWalk",
    "calibration_curve",
    "crps_ensemble",
    "crps_from_quantiles",
    "crps_gaussian",
    "crps_student_t",
    "diebold_mariano",
    "direction_accuracy",
    "direction_counts",
    "evaluate_forecasts",
    "interval_coverage",
    "mae",
    "mase",
    "momentum_log_returns",
    "pinball_loss",
    "pit_values",
    "rmse",
]


def __getattr__(name: str):
    if name in ("MambaForecaster", "GlobalMambaForecaster"):  # torch is imported only when a model is asked for
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
