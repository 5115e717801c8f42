"""Shared fixtures of the data-layer tests: synthetic price paths and user files in tmp_path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def random_walk(n: int, seed: int = 0, start: float = 100.0, vol: float = 0.02) -> np.ndarray:
    """Positive geometric random walk ``(n,)``."""
    rng = np.random.default_rng(seed)
    return start * np.exp(np.cumsum(rng.normal(0.0, vol, n)))


@pytest.fixture
def walk_frame() -> pd.DataFrame:
    """500 business days of a random walk with OHLCV columns, shaped like load_prices' output."""
    n = 500
    close = random_walk(n, seed=1)
    index = pd.bdate_range("2020-01-01", periods=n, name="date").as_unit("ns")
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"open": close * 0.99, "high": close * 1.01, "low": close * 0.98, "close": close,
                          "volume": rng.integers(100_000, 1_000_000, n).astype(float)}, index=index)
    frame.attrs = {"symbol": "WALK", "source": "test"}
    return frame
