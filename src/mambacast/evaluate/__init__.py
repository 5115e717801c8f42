"""Evaluation core: forecast metrics and tests (`metrics`)."""

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
    "INTERVALS",
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
    "pinball_loss",
    "pit_values",
    "rmse",
]
