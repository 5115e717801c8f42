"""validate_data_quality / check_data_quality: each check on a targeted bad series, and real data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mambacast.data import DataQualityError, check_data_quality, load_prices, validate_data_quality

from ..samples import needs_skfolio
from .conftest import random_walk


def _series(values: np.ndarray, start: str = "2020-01-01") -> pd.Series:
    return pd.Series(values, index=pd.bdate_range(start, periods=len(values), name="date"))


def test_clean_series_is_ok_in_every_form(walk_frame: pd.DataFrame) -> None:
    for form in (walk_frame, walk_frame["close"], walk_frame["close"].to_numpy(), list(walk_frame["close"])):
        assert validate_data_quality(form) == (True, "OK")


def test_too_few_samples() -> None:
    ok, msg = validate_data_quality(random_walk(50))
    assert not ok and "only 50 prices, need at least min_samples=100" in msg
    assert validate_data_quality(random_walk(50), min_samples=20)[0]


def test_missing_ratio_fails_beyond_the_limit_and_warns_below() -> None:
    values = random_walk(200)
    values[[10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110]] = np.nan  # 5.5%
    ok, msg = validate_data_quality(_series(values))
    assert not ok and "11 of 200 prices missing (5.5%), first on 2020-01-15" in msg
    assert "max_missing_ratio=5.0%" in msg
    ok, msg = validate_data_quality(_series(values), max_missing_ratio=0.10)
    assert ok and msg.startswith("OK with warnings: 11 of 200 prices missing")


def test_infinite_and_non_positive_prices() -> None:
    values = random_walk(200)
    values[5] = np.inf
    values[7] = 0.0
    values[9] = -3.0
    ok, msg = validate_data_quality(_series(values))
    assert not ok
    assert "1 infinite prices, first on 2020-01-08" in msg
    assert "2 zero or negative prices, first on 2020-01-10 (0)" in msg


def test_constant_prices_have_no_variance() -> None:
    ok, msg = validate_data_quality(np.full(300, 42.0), stale_days=10_000)
    assert not ok and "(nearly) constant" in msg


def test_duplicate_and_unsorted_dates() -> None:
    values = random_walk(200)
    index = pd.bdate_range("2020-01-01", periods=200)
    dup = pd.Series(values, index=index.insert(5, index[3])[:200])
    ok, msg = validate_data_quality(dup)
    assert not ok and "duplicate dates 2020-01-06" in msg
    unsorted = pd.Series(values, index=index[::-1])
    ok, msg = validate_data_quality(unsorted)
    assert not ok and "dates not in ascending order" in msg


def test_stale_runs_warn_then_fail() -> None:
    values = random_walk(400)
    values[100:112] = values[100]  # 12 identical days: 11 repeats = 2.75%
    ok, msg = validate_data_quality(_series(values))
    assert ok and "1 stale run(s) of >= 10 identical prices (2.8% of days), longest 12 days from 2020-05-20" in msg
    values[200:215] = values[200]  # + 14 repeats: 6.25% > 5%
    ok, msg = validate_data_quality(_series(values))
    assert not ok and "2 stale run(s)" in msg and "stale quotes are missing data" in msg


def test_split_like_jump_is_a_warning_not_a_failure() -> None:
    values = random_walk(300, vol=0.005)
    values[150:] /= 4.0  # an unadjusted 4:1 split
    ok, msg = validate_data_quality(_series(values))
    assert ok and "price x0.25 on 2020-07-29 looks like an unadjusted split" in msg
    big_but_not_split = random_walk(300, vol=0.005)
    big_but_not_split[150:] *= 6.5
    assert validate_data_quality(big_but_not_split) == (True, "OK")


def test_check_data_quality_raises_with_the_symbol() -> None:
    with pytest.raises(DataQualityError, match=r"^XYZ: only 10 prices"):
        check_data_quality(random_walk(10), "XYZ")
    assert check_data_quality(random_walk(200), "XYZ") == "OK"


@needs_skfolio
def test_real_data_findings() -> None:
    """Real quirks of the sample data: RRC's stale early 1990s, AAPL's -52% day on 2000-09-29."""
    ok, msg = validate_data_quality(load_prices("RRC", days=None))
    assert not ok and "17 stale run(s)" in msg and "longest 69 days from 1990-01-02" in msg
    assert validate_data_quality(load_prices("RRC", days=2000)) == (True, "OK")
    ok, msg = validate_data_quality(load_prices("AAPL", days=None))
    assert ok and "price x0.48 on 2000-09-29" in msg
