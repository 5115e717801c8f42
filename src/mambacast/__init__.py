"""mambacast: multi-horizon stock price forecasting with Mamba selective state-space models.

The names of the user's guide are importable from here, e.g.
`from mambacast import MambaPredictor, MambaConfig, fetch_historical_prices`. Everything beyond
the config and the model is imported on first use, so `import mambacast` stays quick.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .config import MambaConfig, TrainConfig, preset
from .nn.mamba import MambaModel

try:
    __version__ = version("mambacast")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

_LAZY = {
    "MambaPredictor": ".predict",
    "PredictionResult": ".predict",
    "TimeSeriesFeatureEngineer": ".data.features",
    "SequenceGenerator": ".data.sequences",
    "DataAugmentor": ".data.augment",
    "validate_data_quality": ".data.quality",
    "fetch_historical_prices": ".data.universe",
    "load_prices": ".data.sources",
    "train_single_symbol": ".train.pipeline",
    "TrainingCallbacks": ".train.callbacks",
    "MetricsTracker": ".train.callbacks",
    "ModelStore": ".store",
}

__all__ = ["MambaConfig", "TrainConfig", "preset", "MambaModel", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mambacast' has no attribute {name!r}")
