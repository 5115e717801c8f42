"""Universes and --symbols parsing."""

from __future__ import annotations

import pytest

from mambacast.data import (
    SAMPLE,
    TEST,
    TIER_1,
    UNIVERSES,
    DataError,
    UnknownSymbolError,
    UnknownUniverseError,
    check_available,
    parse_symbols,
    sample_symbols,
)

from ..samples import HAS_SKFOLIO, needs_bokeh


def test_universes() -> None:
    assert TEST == ["AAPL", "MSFT", "GOOGL"]
    assert len(TIER_1) == 50 and len(set(TIER_1)) == 50
    assert set(TEST) <= set(TIER_1)
    assert SAMPLE == sample_symbols() and set(TEST) <= set(SAMPLE)
    assert set(UNIVERSES) == {"TEST", "TIER_1", "SAMPLE"}


@pytest.mark.parametrize(("spec", "expected"), [
    ("AAPL,MSFT,NVDA,TSLA", ["AAPL", "MSFT", "NVDA", "TSLA"]),
    (" aapl , msft ,, aapl ", ["AAPL", "MSFT"]),
    ("aapl msft\tgoogl", ["AAPL", "MSFT", "GOOGL"]),
    (["msft", "AAPL,msft"], ["MSFT", "AAPL"]),
    ("test", TEST),
    ("TEST,NVDA,AAPL", [*TEST, "NVDA"]),
    ("brk-b,^gspc", ["BRK-B", "^GSPC"]),
])
def test_parse_symbols(spec: str | list[str], expected: list[str]) -> None:
    assert parse_symbols(spec) == expected


@pytest.mark.parametrize("spelling", ["TIER_1", "tier_1", "Tier-1", "TIER1"])
def test_universe_spellings(spelling: str) -> None:
    assert parse_symbols(spelling) == TIER_1


def test_unknown_universe_lists_the_valid_names() -> None:
    with pytest.raises(UnknownUniverseError, match=r"'TIER_2'.*TEST, TIER_1, SAMPLE.*did you mean TIER_1"):
        parse_symbols("TIER_2")
    with pytest.raises(UnknownUniverseError, match="'MY_STOCKS'"):
        parse_symbols("AAPL,my_stocks")


def test_bad_specs() -> None:
    with pytest.raises(DataError, match="no symbols"):
        parse_symbols(" , ")
    with pytest.raises(UnknownSymbolError, match="'AA/PL' is not a valid ticker"):
        parse_symbols("AA/PL")
    with pytest.raises(DataError, match="must be strings"):
        parse_symbols(["AAPL", 3])  # type: ignore[list-item]


@needs_bokeh
def test_check_available_sample() -> None:
    available, missing = check_available("AAPL,NVDA,GOOGL")
    assert available == ["AAPL", "GOOGL"]
    assert set(missing) == {"NVDA"} and "--source yahoo" in missing["NVDA"]


@needs_bokeh
def test_check_available_csv_names_the_sample_source(tmp_path) -> None:
    (tmp_path / "NVDA.csv").write_text("date,close\n2024-01-02,1\n")
    available, missing = check_available(["NVDA", "IBM", "ZZZ"], source="csv", path=tmp_path)
    assert available == ["NVDA"]
    assert "IBM is in the sample source (sample:bokeh_sampledata)" in missing["IBM"]
    assert "--source yahoo" in missing["ZZZ"]


@needs_bokeh
def test_tier_1_in_the_sample_source() -> None:
    available, missing = check_available("TIER_1")
    expected = 19 if HAS_SKFOLIO else 4  # bokeh: AAPL, MSFT, GOOGL, IBM
    assert len(available) == expected and len(missing) == 50 - expected
