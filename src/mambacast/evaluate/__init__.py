"""Evaluation: forecast metrics and tests (`metrics`), baseline forecasters (`baselines`), the Mamba model behind
the same interface (`model.MambaForecaster`, imported lazily: it needs torch) and the walk-forward backtest
(`backtest`)."""

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
    if name == "MambaForecaster":  # torch is imported only when the model is asked for
        from .model import MambaForecaster

        return MambaForecaster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
