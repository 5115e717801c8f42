"""Price sources: the real sample data, the user's csv/parquet files, yahoo (mocked), helpers."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import types

import numpy as np
import pandas as pd
import pytest

from mambacast.data import (
    DataError,
    DataFileError,
    MissingVolumeError,
    SourceUnavailableError,
    UnknownSymbolError,
    as_close_array,
    as_price_frame,
    available_symbols,
    fetch_historical_prices,
    load_prices,
    sample_install_hint,
    sample_symbols,
)
from mambacast.data import sources as sources_module
from mambacast.data.yahoo import YAHOO_MAX_AGE_S

from ..samples import HAS_SKFOLIO, needs_bokeh, needs_sample, needs_skfolio

# (rows, first date, last date, first close, last close) read from the packages' files.
BOKEH = {
    "AAPL": (3270, "2000-03-01", "2013-03-01", 4.186662803811, 56.137353095488),
    "MSFT": (3270, "2000-03-01", "2013-03-01", 30.225709797294, 24.684342419163),
    "GOOG": (2148, "2004-08-19", "2013-03-01", 50.32284179174976, 404.3431686260103),
    "IBM": (3270, "2000-03-01", "2013-03-01", 73.667718762847, 175.27118333217),
    "FB": (196, "2012-05-18", "2013-03-01", 38.2318, 27.78),
}
ARCH = {
    "^GSPC": (5031, "1999-01-04", "2018-12-31", 1228.099976, 2506.850098),
    "^IXIC": (5031, "1999-01-04", "2018-12-31", 2208.050049, 6635.279785),
}
SKFOLIO_SYMBOLS = ["AAPL", "AMD", "BAC", "BBY", "CVX", "GE", "HD", "JNJ", "JPM", "KO",
                   "LLY", "MRK", "MSFT", "PEP", "PFE", "PG", "RRC", "UNH", "WMT", "XOM"]


def _assert_schema(frame: pd.DataFrame) -> None:
    assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.name == "date"
    assert frame.index.tz is None
    assert frame.index.is_monotonic_increasing and frame.index.is_unique
    assert frame["close"].dtype == np.float64
    assert np.isfinite(frame["close"]).all() and (frame["close"] > 0).all()


# ---------------------------------------------------------------------------------------- sample


@pytest.mark.parametrize("symbol", [pytest.param(s, marks=needs_sample(s)) for s in sample_symbols()])
def test_every_sample_symbol_loads_with_the_common_schema(symbol: str) -> None:
    frame = load_prices(symbol, days=None)
    _assert_schema(frame)
    assert frame.attrs["symbol"] == symbol and frame.attrs["source"].startswith("sample:")
    if "low" in frame:  # adjusted O/H/L stay around the adjusted close
        assert (frame["low"] <= frame["close"] * (1 + 1e-9)).all()
        assert (frame["close"] <= frame["high"] * (1 + 1e-9)).all()


@pytest.mark.parametrize("symbol", [pytest.param(s, marks=needs_sample(s)) for s in sorted(BOKEH) + sorted(ARCH)])
def test_bokeh_and_arch_content(symbol: str) -> None:
    rows, first, last, first_close, last_close = {**BOKEH, **ARCH}[symbol]
    frame = load_prices(symbol, days=None, with_volume=True)
    assert len(frame) == rows
    assert str(frame.index[0].date()) == first and str(frame.index[-1].date()) == last
    assert frame["close"].iloc[0] == pytest.approx(first_close, rel=1e-12)
    assert frame["close"].iloc[-1] == pytest.approx(last_close, rel=1e-12)
    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    assert (frame["volume"] >= 0).all()


@needs_skfolio
@pytest.mark.parametrize("symbol", SKFOLIO_SYMBOLS)
def test_skfolio_content(symbol: str) -> None:
    frame = load_prices(symbol, days=None)
    assert frame.attrs["source"] == "sample:skfolio"
    assert len(frame) == 8313
    assert str(frame.index[0].date()) == "1990-01-02" and str(frame.index[-1].date()) == "2022-12-28"
    assert list(frame.columns) == ["close"]


@needs_skfolio
def test_aapl_defaults_to_the_longest_history_and_volume_picks_bokeh() -> None:
    default = load_prices("AAPL", days=None)
    assert default.attrs["source"] == "sample:skfolio" and len(default) == 8313
    assert default["close"].iloc[0] == 0.264 and default["close"].iloc[-1] == 125.674
    with_volume = load_prices("AAPL", days=None, with_volume=True)
    assert with_volume.attrs["source"] == "sample:bokeh_sampledata" and len(with_volume) == 3270
    # Both are adjusted closes of the same stock: their daily returns agree where they overlap.
    both = pd.concat([np.log(default["close"]).diff(), np.log(with_volume["close"]).diff()], axis=1,
                     join="inner").dropna()
    assert len(both) > 3000
    assert np.corrcoef(both.to_numpy().T)[0, 1] > 0.95


@needs_bokeh
def test_googl_is_goog_and_aliases_resolve() -> None:
    googl, goog = load_prices("GOOGL", days=None), load_prices("goog", days=None)
    pd.testing.assert_frame_equal(googl, goog, check_like=False)
    assert googl.attrs["symbol"] == "GOOGL" and goog.attrs["symbol"] == "GOOG"
    pd.testing.assert_frame_equal(load_prices("SPX"), load_prices("^GSPC"))
    pd.testing.assert_frame_equal(load_prices("NASDAQ"), load_prices("^IXIC"))


@needs_bokeh
def test_days_keeps_the_last_rows_and_returns_a_copy() -> None:
    full = load_prices("IBM", days=None)
    tail = load_prices("IBM", days=250)
    pd.testing.assert_frame_equal(tail, full.iloc[-250:])
    tail["close"] = -1.0  # the per-process cache must not see this
    assert (load_prices("IBM", days=250)["close"] > 0).all()


@pytest.mark.parametrize("days", [0, -5, 2.5, True])
def test_bad_days(days: object) -> None:
    with pytest.raises(DataError, match="days="):
        load_prices("IBM", days=days)  # type: ignore[arg-type]


def test_unknown_sample_symbol_lists_close_matches() -> None:
    with pytest.raises(UnknownSymbolError, match=r"'APPL'.*similar symbols: AAPL.*--source yahoo"):
        load_prices("APPL")


def test_unknown_source() -> None:
    with pytest.raises(DataError, match=r"unknown source 'bloomberg'.*sample, csv, parquet, yahoo"):
        load_prices("AAPL", source="bloomberg")


def test_volume_required_but_absent_names_the_symbols_that_have_it() -> None:
    if not HAS_SKFOLIO:
        pytest.skip("needs a closes-only sample symbol from skfolio")
    with pytest.raises(MissingVolumeError, match=r"JNJ has no volume.*AAPL.*GOOGL"):
        load_prices("JNJ", with_volume=True)


@pytest.fixture
def without_skfolio(monkeypatch: pytest.MonkeyPatch):
    """Pretend skfolio is not installed (and reset the per-process cache around the test)."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "skfolio" else real_find_spec(name, *a))
    sources_module._sample_frames.cache_clear()
    yield
    sources_module._sample_frames.cache_clear()


@needs_bokeh
def test_without_skfolio_the_other_packages_still_serve(without_skfolio: None) -> None:
    aapl = load_prices("AAPL", days=None)
    assert aapl.attrs["source"] == "sample:bokeh_sampledata" and len(aapl) == 3270
    with pytest.raises(SourceUnavailableError, match=r"JNJ.*skfolio.*pip install 'mambacast\[sample\]'"):
        load_prices("JNJ")
    listed = available_symbols()
    assert "JNJ" not in set(listed["symbol"]) and {"AAPL", "GOOGL", "^GSPC"} <= set(listed["symbol"])


@needs_bokeh
def test_available_symbols_sample() -> None:
    listed = available_symbols()
    assert list(listed.columns) == ["symbol", "source", "first_date", "last_date", "rows", "has_volume"]
    assert set(listed["symbol"]) == set(sample_symbols()) if HAS_SKFOLIO else True
    googl = listed[listed["symbol"] == "GOOGL"].iloc[0]
    assert googl["rows"] == 2148 and bool(googl["has_volume"])
    aapl = listed[listed["symbol"] == "AAPL"]
    assert list(aapl["rows"]) == sorted(aapl["rows"], reverse=True)  # default (longest) first


@needs_bokeh
def test_sample_files_are_parsed_once_per_process() -> None:
    sources_module._sample_frames.cache_clear()
    for symbol in ["IBM", "AAPL", "MSFT", "GOOGL", "FB"]:
        load_prices(symbol, with_volume=True)
    bokeh_misses = sources_module._sample_frames.cache_info().misses
    assert bokeh_misses <= len(sources_module._SAMPLE_SETS)


@needs_sample("AAPL")
def test_guide_example_3_fetch_and_validate() -> None:
    """The guide's Example 3, steps 1 and 2, on the offline sample source."""
    from mambacast.data import validate_data_quality

    async def steps() -> dict[str, pd.DataFrame]:
        return await fetch_historical_prices(["AAPL"], days=2000)

    prices = asyncio.run(steps())
    assert list(prices) == ["AAPL"] and len(prices["AAPL"]) == 2000
    is_valid, msg = validate_data_quality(prices["AAPL"])
    assert is_valid, msg


@needs_bokeh
def test_fetch_historical_prices_keeps_order_and_accepts_a_spec() -> None:
    prices = asyncio.run(fetch_historical_prices("msft, ibm,GOOGL", days=100))
    assert list(prices) == ["MSFT", "IBM", "GOOGL"]
    assert all(len(f) == 100 for f in prices.values())
    with pytest.raises(UnknownSymbolError):
        asyncio.run(fetch_historical_prices(["IBM", "NOPE"]))


# ------------------------------------------------------------------------------ csv / parquet


def _write_csv(path, text: str) -> None:
    path.write_text(text)


def test_csv_directory_case_insensitive_and_adjusted(tmp_path) -> None:
    _write_csv(tmp_path / "aapl.CSV", "Date,Open,High,Low,Close,Adj Close,Volume\n"
               "2024-01-03,10,11,9,10,5,100\n2024-01-02,20,22,18,20,10,200\n")
    frame = load_prices("AAPL", source="csv", path=tmp_path)
    _assert_schema(frame)
    assert list(frame["close"]) == [10.0, 5.0]  # adj_close, sorted by date
    assert list(frame["high"]) == [11.0, 5.5]  # scaled by adj_close / close
    assert list(frame["volume"]) == [200.0, 100.0]
    assert frame.attrs == {"symbol": "AAPL", "source": f"csv:{tmp_path}"}


def test_csv_long_file_with_symbol_column(tmp_path) -> None:
    file = tmp_path / "prices.csv"
    _write_csv(file, "ticker,DATE,close\nAAA,2024-01-02,1\nBBB,2024-01-02,2\nAAA,2024-01-03,1.5\n")
    assert list(load_prices("aaa", source="csv", path=file)["close"]) == [1.0, 1.5]
    assert set(available_symbols("csv", file)["symbol"]) == {"AAA", "BBB"}
    with pytest.raises(UnknownSymbolError, match=r"prices.csv has no rows for AAB.*similar symbols: AAA"):
        load_prices("AAB", source="csv", path=file)


def test_csv_missing_file_names_the_expected_file_and_sample_alternative(tmp_path) -> None:
    _write_csv(tmp_path / "AAPX.csv", "date,close\n2024-01-02,1\n")
    with pytest.raises(UnknownSymbolError, match=r"no csv file for AAPL.*AAPL.csv.*AAPX.*--source sample"):
        load_prices("AAPL", source="csv", path=tmp_path)
    with pytest.raises(DataFileError, match="does not exist"):
        load_prices("AAPL", source="csv", path=tmp_path / "nope.csv")
    with pytest.raises(DataFileError, match="needs a path"):
        load_prices("AAPL", source="csv")


@pytest.mark.parametrize(("content", "pattern"), [
    ("", r"X.csv is empty"),
    ("date,close\n", r"X.csv has a header but no rows"),
    ("date,price\n2024-01-02,1\n", r"X.csv: missing column\(s\) close \(found: date, price\)"),
    ("Day,Close\n2024-01-02,1\n", r"missing column\(s\) date \(found: day, close\)"),
    ("date,close\n2024-01-02,1\n2024-01-03,$2.5\n", r"column 'close' has non-numeric value '\$2.5' at line 3"),
    ("date,close\n2024-01-02,1\nyesterday,2\n", r"unparsable date 'yesterday' at line 3"),
    ("date,close\n2024-01-02,1\n2024-01-03,2\n2024-01-02,3\n", r"duplicate dates 2024-01-02"),
    ("date,close\n2024-01-02,1\n2024-01-03,2,3,4\n", r"cannot be read as csv"),
])
def test_csv_bad_files_raise_specific_errors(tmp_path, content: str, pattern: str) -> None:
    _write_csv(tmp_path / "X.csv", content)
    with pytest.raises(DataFileError, match=pattern):
        load_prices("X", source="csv", path=tmp_path)


def test_csv_blank_close_is_a_missing_day_not_an_error(tmp_path) -> None:
    _write_csv(tmp_path / "X.csv", "date,close\n2024-01-02,1\n2024-01-03,\n2024-01-04,NA\n2024-01-05,2\n")
    frame = load_prices("X", source="csv", path=tmp_path)
    assert frame["close"].isna().sum() == 2


def test_csv_file_edits_are_seen_despite_the_cache(tmp_path) -> None:
    file = tmp_path / "X.csv"
    _write_csv(file, "date,close\n2024-01-02,1\n")
    assert load_prices("X", source="csv", path=tmp_path)["close"].iloc[-1] == 1.0
    _write_csv(file, "date,close\n2024-01-02,1\n2024-01-03,22\n")
    os.utime(file, ns=(file.stat().st_mtime_ns + 10**9,) * 2)
    assert load_prices("X", source="csv", path=tmp_path)["close"].iloc[-1] == 22.0


def test_with_volume_on_a_file_without_volume(tmp_path) -> None:
    _write_csv(tmp_path / "X.csv", "date,close\n2024-01-02,1\n")
    with pytest.raises(MissingVolumeError, match="X from csv:.* has no volume column"):
        load_prices("X", source="csv", path=tmp_path, with_volume=True)


def test_parquet_round_trip(tmp_path, walk_frame: pd.DataFrame) -> None:
    pytest.importorskip("pyarrow")
    walk_frame.to_parquet(tmp_path / "WALK.parquet")  # date as the index, as pandas writes it
    frame = load_prices("walk", source="parquet", path=tmp_path, days=None)
    pd.testing.assert_frame_equal(frame, walk_frame, check_freq=False)


def test_parquet_without_pyarrow(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "X.parquet").write_bytes(b"PAR1")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyarrow" else real_find_spec(name, *a))
    with pytest.raises(SourceUnavailableError, match=r"pip install 'mambacast\[parquet\]'"):
        load_prices("X", source="parquet", path=tmp_path)


# ----------------------------------------------------------------------------------------- yahoo


def _fake_yfinance(history: pd.DataFrame | Exception, calls: list[str]) -> types.ModuleType:
    module = types.ModuleType("yfinance")

    class Ticker:
        def __init__(self, symbol: str) -> None:
            self.symbol = symbol

        def history(self, **kwargs: object) -> pd.DataFrame:
            calls.append(self.symbol)
            if isinstance(history, Exception):
                raise history
            return history

    module.Ticker = Ticker  # type: ignore[attr-defined]
    return module


def _yahoo_history() -> pd.DataFrame:
    index = pd.DatetimeIndex(pd.bdate_range("2024-01-02", periods=5, tz="America/New_York"), name="Date")
    close = np.array([10.0, 11.0, 12.0, 11.5, 12.5])
    return pd.DataFrame({"Open": close, "High": close + 1, "Low": close - 1, "Close": close,
                         "Adj Close": close / 2, "Volume": [1e6] * 5}, index=index)


def test_yahoo_missing_package_suggests_offline_sources(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yfinance", None)  # makes `import yfinance` raise ImportError
    with pytest.raises(SourceUnavailableError, match=r"mambacast\[yahoo\].*--source sample.*--source csv"):
        load_prices("AAPL", source="yahoo", path=tmp_path)


def test_yahoo_downloads_once_then_serves_the_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyarrow")
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "yfinance", _fake_yfinance(_yahoo_history(), calls))
    first = load_prices("aapl", source="yahoo", path=tmp_path, with_volume=True)
    _assert_schema(first)
    assert list(first["close"]) == [5.0, 5.5, 6.0, 5.75, 6.25]
    assert str(first.index[0]) == "2024-01-02 00:00:00"  # exchange-local date, zone dropped
    assert (tmp_path / "AAPL.parquet").is_file() and calls == ["AAPL"]
    second = load_prices("AAPL", source="yahoo", path=tmp_path)
    assert calls == ["AAPL"]  # fresh cache: no second download
    pd.testing.assert_frame_equal(first, second)
    assert list(available_symbols("yahoo", tmp_path)["symbol"]) == ["AAPL"]


def test_yahoo_offline_falls_back_to_a_stale_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyarrow")
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "yfinance", _fake_yfinance(_yahoo_history(), calls))
    load_prices("AAPL", source="yahoo", path=tmp_path)
    old = (tmp_path / "AAPL.parquet").stat().st_mtime - 2 * YAHOO_MAX_AGE_S
    os.utime(tmp_path / "AAPL.parquet", (old, old))
    monkeypatch.setitem(sys.modules, "yfinance", _fake_yfinance(ConnectionError("offline"), calls))
    assert len(load_prices("AAPL", source="yahoo", path=tmp_path)) == 5
    with pytest.raises(SourceUnavailableError, match=r"offline or rate-limited.*--source sample"):
        load_prices("MSFT", source="yahoo", path=tmp_path)


def test_yahoo_empty_answer_is_an_unknown_symbol(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yfinance", _fake_yfinance(pd.DataFrame(), []))
    with pytest.raises(UnknownSymbolError, match="Yahoo returned no prices for ZZZZ"):
        load_prices("ZZZZ", source="yahoo", path=tmp_path)


# ------------------------------------------------------------------------------------- helpers


def test_as_close_array_accepts_the_three_forms(walk_frame: pd.DataFrame) -> None:
    expected = walk_frame["close"].to_numpy()
    renamed = walk_frame.rename(columns={"close": "Close"})
    for form in (walk_frame, renamed, walk_frame["close"], expected, list(expected), expected[:, None]):
        out = as_close_array(form)
        assert out.dtype == np.float64 and out.shape == expected.shape
        np.testing.assert_array_equal(out, expected)
    with pytest.raises(DataError, match=r"no close column \(columns: open, high"):
        as_close_array(walk_frame.drop(columns="close"))
    with pytest.raises(DataError, match="one series of closes"):
        as_close_array(np.ones((3, 2)))


def test_as_price_frame(walk_frame: pd.DataFrame) -> None:
    from_array = as_price_frame(np.array([1.0, 2.0, 3.0]))
    assert list(from_array.columns) == ["close"] and from_array.index.name == "day"
    assert list(from_array.index) == [0, 1, 2]
    from_series = as_price_frame(walk_frame["close"].rename("WALK"))
    assert from_series.attrs["symbol"] == "WALK" and from_series.index.equals(walk_frame.index)
    from_frame = as_price_frame(walk_frame.rename(columns=str.upper))
    assert list(from_frame.columns) == list(walk_frame.columns) and from_frame.attrs["symbol"] == "WALK"


def test_long_file_errors_give_the_line_in_the_file(tmp_path) -> None:
    file = tmp_path / "all.csv"
    _write_csv(file, "symbol,date,close\nAAA,2024-01-02,1\nBBB,2024-01-02,2\nBBB,2024-01-03,n/a?\n")
    with pytest.raises(DataFileError, match=r"all.csv: column 'close' has non-numeric value 'n/a\?' at line 4"):
        load_prices("BBB", source="csv", path=file)


@needs_bokeh
def test_sample_install_hint_names_the_package(without_skfolio: None) -> None:
    assert sample_install_hint("MSFT") is None                     # bokeh-sampledata has it
    assert sample_install_hint("JNJ") == "pip install 'mambacast[sample]'"
    with pytest.raises(UnknownSymbolError):
        sample_install_hint("NOPE")
