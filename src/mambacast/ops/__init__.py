"""Compiled CPU kernels, built on first use (see `_loader`); pure-PyTorch fallbacks live in `mambacast.nn`."""

from ._loader import ExtensionUnavailable, available, cache_dir, load

__all__ = ["ExtensionUnavailable", "available", "cache_dir", "load"]
