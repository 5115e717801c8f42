"""mambacast: multi-horizon stock price forecasting with Mamba selective state-space models."""

from importlib.metadata import PackageNotFoundError, version

from .config import MambaConfig, TrainConfig, preset
from .nn.mamba import MambaModel

try:
    __version__ = version("mambacast")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["MambaConfig", "TrainConfig", "preset", "MambaModel", "__version__"]
