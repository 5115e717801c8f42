"""The data layer: price sources, universes, quality checks, features, windows, scalers, augmentation.

Typical use (all offline on the bundled ``sample`` source)::

    from mambacast.data import (load_prices, check_data_quality, TimeSeriesFeatureEngineer,
                                SequenceGenerator, temporal_split)

    prices = load_prices("AAPL", days=2000)                  # DataFrame indexed by date, column close
    check_data_quality(prices, "AAPL")                       # raises DataQualityError if unusable
    engineer = TimeSeriesFeatureEngineer()
    features = engineer.extract_features(prices)             # (n_days, n_features) float32
    generator = SequenceGenerator(sequence_length=60, prediction_horizons=[1, 5, 10, 30])
    X, y = generator.generate_sequences(features, prices, start=engineer.warmup_)
    train_idx, val_idx = temporal_split(len(X), 0.2, embargo=30)
"""

from .augment import DataAugmentor
from .commands import check_symbols, list_symbols_table, quality_report
from .errors import (
    DataError,
    DataFileError,
    DataQualityError,
    InsufficientHistoryError,
    MissingVolumeError,
    SourceUnavailableError,
    UnknownSymbolError,
    UnknownUniverseError,
)
from .features import TimeSeriesFeatureEngineer, forward_fill_closes
from .quality import check_data_quality, validate_data_quality
from .sequences import FeatureScaler, SequenceGenerator, TargetScaler, temporal_split
from .sources import (
    SOURCES,
    as_close_array,
    as_price_frame,
    available_symbols,
    load_prices,
    sample_install_hint,
    sample_symbols,
)
from .universe import SAMPLE, TEST, TIER_1, UNIVERSES, check_available, fetch_historical_prices, parse_symbols

__all__ = [
    "DataAugmentor",
    "check_symbols", "list_symbols_table", "quality_report",
    "DataError", "DataFileError", "DataQualityError", "InsufficientHistoryError", "MissingVolumeError",
    "SourceUnavailableError", "UnknownSymbolError", "UnknownUniverseError",
    "TimeSeriesFeatureEngineer", "forward_fill_closes",
    "check_data_quality", "validate_data_quality",
    "FeatureScaler", "SequenceGenerator", "TargetScaler", "temporal_split",
    "SOURCES", "as_close_array", "as_price_frame", "available_symbols", "fetch_historical_prices", "load_prices",
    "sample_install_hint",
    "sample_symbols",
    "SAMPLE", "TEST", "TIER_1", "UNIVERSES", "check_available", "parse_symbols",
]  # fmt: skip
