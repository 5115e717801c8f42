"""Exceptions of the data layer.

Every error a user can cause while loading, checking or shaping price data is a `DataError`.
It subclasses `ValueError` so the command line reports it as one readable line (no traceback),
and its message names the symbol, file, column or parameter at fault and says what to do.
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "UnknownSymbolError",
    "UnknownUniverseError",
    "DataQualityError",
    "InsufficientHistoryError",
    "DataFileError",
    "SourceUnavailableError",
    "MissingVolumeError",
]


class DataError(ValueError):
    """Base class of every data-layer error."""


class UnknownSymbolError(DataError):
    """A symbol no source (or not the chosen source) has; the message lists similar symbols."""


class UnknownUniverseError(DataError):
    """A universe name such as ``TIER_2`` that is not defined; the message lists the valid ones."""


class DataQualityError(DataError):
    """Prices that fail `validate_data_quality` (too few, NaN, non-positive, constant, ...)."""


class InsufficientHistoryError(DataError):
    """Too few days for the requested windows, horizons, warm-up or split; says needed vs available."""


class DataFileError(DataError):
    """A user's CSV/Parquet file that is missing, empty, or has bad columns, values or dates."""


class SourceUnavailableError(DataError):
    """A source that cannot serve right now: offline, rate-limited, or its optional extra is not installed."""


class MissingVolumeError(DataError):
    """Volume was asked for (``with_volume`` / ``include_volume``) but the data has none."""
