"""Bad price files through `train` (the symbol fails, exit 1) and `predict` (exit 2)."""

import pytest

from .conftest import TINY, assert_one_line, run_cli

# name of the file in the `files` fixture, what the one line must say
FILES = [
    ("missing", "does_not_exist.csv"),
    ("empty", "empty"),
    ("header_only", "no rows"),
    ("no_close", "close"),
    ("text_close", "abc"),
    ("bad_date", "2020-13-45"),
    ("duplicate_dates", "duplicate"),
    ("negative", "negative"),
    ("zero", "zero"),
    ("many_nan", "missing"),
    ("inf", "inf"),
    ("short", "only 50 prices"),
    ("constant", "constant"),
    ("garbage", "garbage.csv"),
    ("folder_without_aapl", "AAPL"),
]


@pytest.mark.parametrize("name, match", FILES, ids=[f[0] for f in FILES])
def test_train_on_a_bad_file(good, files, name, match):
    code, out, err = run_cli(["train", "--symbols", "AAPL", "--source", "csv", "--data", str(files[name]),
                              "--save-dir", str(good.root), "--quiet", *TINY])
    assert_one_line(code, out, err, 1, match)
    assert "[AAPL] ✗ Failed" in out
    assert good.unchanged()


PREDICT_FILES = [("missing", "does_not_exist.csv"), ("empty", "empty"), ("negative", "negative"),
                 ("text_close", "abc"), ("garbage", "garbage.csv")]


@pytest.mark.parametrize("name, match", PREDICT_FILES, ids=[f[0] for f in PREDICT_FILES])
def test_predict_on_a_bad_file(good, files, name, match):
    code, out, err = run_cli(["predict", "--symbols", "AAPL", "--source", "csv", "--data", str(files[name]),
                              "--save-dir", str(good.root)])
    assert_one_line(code, out, err, 2, match)
    assert good.unchanged()


def test_parquet_source_on_a_csv_file(good, files):
    pytest.importorskip("pyarrow")
    code, out, err = run_cli(["train", "--symbols", "AAPL", "--source", "parquet", "--data", str(files["good"]),
                              "--save-dir", str(good.root), "--quiet", *TINY])
    assert_one_line(code, out, err, 1, "good.csv")
    assert good.unchanged()
