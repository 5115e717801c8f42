"""Text of `mambacast data list` and `mambacast data check`."""

from __future__ import annotations

from mambacast.data import check_symbols, list_symbols_table, quality_report

from ..samples import HAS_SKFOLIO, needs_bokeh


@needs_bokeh
def test_list_symbols_table_sample() -> None:
    text = list_symbols_table()
    lines = text.splitlines()
    assert lines[0].split() == ["symbol", "source", "first", "date", "last", "date", "rows", "volume"]
    googl = next(line for line in lines if line.startswith("GOOGL "))
    assert googl.split() == ["GOOGL", "sample:bokeh_sampledata", "2004-08-19", "2013-03-01", "2,148", "yes"]
    if HAS_SKFOLIO:
        assert "symbols from source 'sample'" in lines[-1]
        assert lines[1].split()[:2] == ["AAPL", "sample:skfolio"]
    else:   # the listing ends with what installing skfolio would add
        assert "pip install 'mambacast[sample]'" in lines[-1]


def test_list_symbols_table_csv(tmp_path) -> None:
    (tmp_path / "AAA.csv").write_text("date,close,volume\n2024-01-02,1,10\n2024-01-03,2,20\n")
    text = list_symbols_table("csv", tmp_path)
    assert text.splitlines()[1].split() == ["AAA", f"csv:{tmp_path}", "2024-01-02", "2024-01-03", "2", "yes"]
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert list_symbols_table("csv", empty) == f"no symbols in source 'csv' at {empty}"


@needs_bokeh
def test_check_symbols_reports_each_symbol() -> None:
    report = quality_report("GOOGL,FB,NOPE", days=2000)
    assert list(report["status"]) == ["ok", "ok", "error"]
    assert list(report["rows"]) == [2000, 196, 0]
    text = check_symbols("GOOGL,FB,NOPE", days=2000)
    lines = text.splitlines()
    assert lines[1].split()[:5] == ["GOOGL", "OK", "2,000", "2005-03-22", "2013-03-01"]
    assert lines[3].startswith("NOPE") and "unknown symbol 'NOPE'" in lines[3]
    assert lines[-1] == ("3 symbols checked from source 'sample' (last 2000 days: the rows train reads by default; "
                         "--days all checks what backtest reads): 2 ok, 1 error")
    short = check_symbols("FB", min_samples=250)
    assert "FAILED" in short and "only 196 prices" in short
