"""The backtest's tables, plots, HTML report and `mambacast backtest` command."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

from mambacast.cli import main
from mambacast.cli.backtest import LogOnce
from mambacast.evaluate import BacktestConfig, RandomWalk, run_backtest
from mambacast.report import (
    _fmt_p,
    backtest_rows,
    backtest_summary,
    desk_brier_rows,
    format_backtest_table,
    format_desk_tables,
    write_backtest_report,
)

from .evaluate.test_backtest import Constant
from .samples import needs_skfolio


@pytest.fixture(scope="module")
def result():
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2015-01-01", periods=700)
    prices = {s: pd.DataFrame({"close": 50 * np.exp(np.cumsum(rng.normal(0.0003, 0.012, 700)))}, index=dates)
              for s in ("AAA", "BBB")}
    config = BacktestConfig(horizons=(1, 5), refit_every=120, min_train_days=250, reference="model")
    return run_backtest(prices, lambda s: [Constant("model", 0.0005, 0.011), RandomWalk(),
                                           Constant("wide", 0.0, 0.05)], config)


def metric(result, symbol, name, h, key):
    m = result.metrics
    return float(m[(m.symbol == symbol) & (m.forecaster == name) & (m.horizon == h)][key].iloc[0])


def test_table_shows_the_metric_values_and_marks_the_best(result):
    header, rows, best = backtest_rows(result, "AAA", 1)
    by_name = {r[0]: r for r in rows}
    col = header.index("RMSE%")
    assert by_name["model"][col] == f"{100 * metric(result, 'AAA', 'model', 1, 'ret_rmse'):.3f}"
    cov = header.index("cov80")
    assert by_name["wide"][cov] == f"{metric(result, 'AAA', 'wide', 1, 'coverage_80'):.3f}"
    # best coverage = closest to 0.8; best RMSE = lowest
    covs = {r[0]: abs(metric(result, "AAA", r[0], 1, "coverage_80") - 0.8) for r in rows}
    assert {rows[i][0] for i in best[cov]} == {min(covs, key=covs.get)}
    rmses = {r[0]: metric(result, "AAA", r[0], 1, "ret_rmse") for r in rows}
    assert {rows[i][0] for i in best[col]} == {k for k, v in rmses.items() if v == min(rmses.values())}
    assert {rows[i][0] for i in best[col]} == {"random_walk", "wide"}  # both forecast 0: a tie, both marked
    dm = result.dm[(result.dm.symbol == "AAA") & (result.dm.horizon == 1) & (result.dm.other == "random_walk")
                   & (result.dm.loss == "squared_error")]
    col = header.index("DM SE model-row (2-sided p)")   # the header states the sign convention and the test
    assert by_name["random_walk"][col] == f"{dm['stat'].iloc[0]:+.2f} ({_fmt_p(dm['p_value'].iloc[0])})"
    assert by_name["model"][col] == "(reference)"
    text = format_backtest_table(result)
    assert "pooled over AAA, BBB, 5-day" in text and "AAA, 1-day" in text
    assert f"{100 * metric(result, 'ALL', 'wide', 5, 'ret_crps'):.3f}" in text
    assert "*" in text


def test_summary_is_honest_about_significance(result):
    lines = backtest_summary(result)
    assert lines[0].startswith("Squared error of the log-return (pooled over AAA, BBB): model significantly better")
    # each p-value printed says which test it is: the summary's are one-sided, the table's two-sided
    dm = result.dm[(result.dm.symbol == "ALL") & (result.dm.loss == "crps") & (result.dm.p_better < 0.05)]
    assert not dm.empty
    for r in dm.itertuples():
        assert f"{r.other} at {r.horizon}d (one-sided p{'=' if _fmt_p(r.p_better)[0] != '<' else ''}" \
               f"{_fmt_p(r.p_better)})" in lines[1]
        assert r.stat < 0 and r.p_better < r.p_value   # model better: negative statistic, one-sided p half the other
    assert re.search(r"\(p[=<]", " ".join(lines)) is None   # no unlabelled p
    text = format_backtest_table(result)
    assert "negative = model better, positive = model worse" in text and "one-sided" in text
    assert any("expected by chance" in line for line in lines)
    assert any(line.startswith("Coverage of model's central 50/80/90% intervals") for line in lines)


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "table":
            self.tables += 1

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_is_self_contained(result, tmp_path):
    paths = write_backtest_report(result, tmp_path / "rep", command="mambacast backtest --symbols AAA,BBB")
    page = paths["html"].read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(page)
    # per symbol: forecasts, cumulative loss, calibration; plus the pooled calibration, reliability, PIT
    assert len(parser.images) == 2 * 3 + 1 + 2  # + the pooled reliability diagram and PIT histograms
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'src="(?!data:)', page), "every resource is embedded"
    # metric tables per scope and horizon, DM tables, refit tables
    assert parser.tables >= 3 * 2 + 3 + 2
    text = " ".join(parser.text)
    assert f"{100 * metric(result, 'BBB', 'model', 5, 'ret_mae'):.3f}" in text
    assert "What the backtest shows" in text and "mambacast backtest --symbols AAA,BBB" in text
    for key in ("json", "metrics_csv", "dm_csv", "forecasts_csv"):
        assert paths[key].exists()
    assert json.loads(paths["json"].read_text())["config"]["reference"] == "model"


@needs_skfolio   # AAPL / MSFT in 2021-2022
def test_cli_backtest_baselines_only(tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["backtest", "--symbols", "AAPL", "--no-model", "--start", "2021-01-04", "--end", "2022-06-30",
                 "--horizons", "1,5", "--report", str(out), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "AAPL, 1-day log-returns" in text and "random_walk" in text and "garch_t" in text
    assert "Backtest of 1 symbol(s) in" in text
    assert (out / "report.html").exists() and (out / "metrics.csv").exists()


@needs_skfolio   # AAPL / MSFT in 2021-2022
def test_cli_backtest_with_the_model(tmp_path, capsys):
    out = tmp_path / "rep"
    threads = torch.get_num_threads()
    code = main(["backtest", "--symbols", "MSFT", "--start", "2022-06-01", "--window", "rolling", "--train-days",
                 "600", "--epochs", "1", "--horizons", "1,5", "--baselines", "random_walk", "--threads", "1",
                 "--model", "symbol", "--report", str(out)])
    assert code == 0
    assert torch.get_num_threads() == threads  # --threads is set for the run only
    text = capsys.readouterr().out
    assert "refit 1/1" in text and "mamba" in text and "DM SE mamba-row (2-sided p)" in text
    data = json.loads((out / "metrics.json").read_text())
    assert data["info"]["torch_threads"] == 1
    block = data["symbols"]["MSFT"]["blocks"][0]
    assert block["fit_info"]["mamba"]["days"] == 600 and block["train_end"] < "2022-06-01"


@pytest.mark.parametrize("argv, message", [
    (["backtest"], "say what to backtest"),
    (["backtest", "--symbols", "AAPL", "--start", "yesterday-ish"], "is not a date"),
    (["backtest", "--symbols", "AAPL", "--horizons", "1,x"], "--horizons"),
    (["backtest", "--symbols", "AAPL", "--refit-every", "0"], "--refit-every 0 is invalid"),
    (["backtest", "--symbols", "AAPL", "--threads", "0"], "--threads 0 is invalid"),
    (["backtest", "--symbols", "AAPL", "--seeds", "42,x"], "--seeds '42,x' is invalid"),
    (["backtest", "--symbols", "AAPL", "--seeds", "7,7"], "seeds must be non-negative and distinct"),
    (["backtest", "--symbols", "AAPL", "--seeds", "1,-2"], "seeds must be non-negative and distinct"),
    (["backtest", "--symbols", "AAPL", "--no-model", "--seeds", "1,2"], "--seeds needs the model"),
])
def test_cli_backtest_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("p, text", [
    (0.0497, "0.0497"), (0.04999, "0.04999"), (0.0499999999, "<0.05"), (0.0502, "0.050"), (0.05, "0.050"),
    (0.0123, "0.012"), (0.0004, "<0.001"), (0.7311, "0.731"), (float("nan"), "-"),
])
def test_p_values_never_round_across_five_percent(p, text):
    assert _fmt_p(p) == text


def test_repeated_log_messages_pass_once():
    import logging

    once = LogOnce()
    rec = lambda msg: logging.LogRecord("mambacast.data", logging.WARNING, __file__, 1, msg, None, None)  # noqa: E731
    assert [once.filter(rec(m)) for m in ("gap", "gap", "split", "gap")] == [True, False, True, False]


def test_desk_tables_in_the_console_and_the_report(result, tmp_path):
    header, rows, best = desk_brier_rows(result, "ALL", 5)
    assert header == ["forecaster", "K=-10%", "K=-5%", "K=0%", "K=+5%", "K=+10%"]
    b = result.tables["brier"]
    want = b[(b.symbol == "ALL") & (b.forecaster == "wide") & (b.horizon == 5) & (b.moneyness == 0.05)]["brier"]
    assert {r[0]: r for r in rows}["wide"][4] == f"{100 * want.iloc[0]:.3f}"
    assert rows[-1][0] == "(observed P(S_T>K))"
    text = format_desk_tables(result)
    assert "Brier score x100 of P(S_T > K)" in text and "by calendar year" in text and "PIT histogram" in text
    year = result.tables["coverage_by_year"]
    c = year[(year.symbol == "ALL") & (year.forecaster == "model") & (year.horizon == 1) & (year.year == 2016)]
    assert f"{c['coverage_80'].iloc[0]:.3f}" in text
    paths = write_backtest_report(result, tmp_path / "rep")
    page = paths["html"].read_text(encoding="utf-8")
    assert "What an options desk reads" in page and "Coverage of the central 80% interval by year" in page
    for key in ("brier_csv", "reliability_csv", "coverage_by_year_csv", "pit_csv"):
        assert paths[key].exists()
    assert len(pd.read_csv(paths["pit_csv"])) == len(result.tables["pit"])


@needs_skfolio   # AAPL / MSFT in 2021-2022
def test_cli_backtest_with_several_seeds(tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["backtest", "--symbols", "MSFT", "--start", "2022-06-01", "--window", "rolling", "--train-days",
                 "600", "--epochs", "1", "--horizons", "1,5", "--baselines", "garch_t,har_t", "--seeds", "1,2",
                 "--report", str(out), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "Seed spread" in text and "mamba_s1" in text and "mamba_s2" in text
    data = json.loads((out / "metrics.json").read_text())
    assert {m["forecaster"] for m in data["metrics"]} == {"mamba_s1", "mamba_s2", "garch_t", "har_t"}
    assert {d["reference"] for d in data["dm"]} == {"mamba_s1", "mamba_s2"}
    spread = pd.read_csv(out / "seed_spread.csv")
    row = spread[(spread.horizon == 5) & (spread.other == "har_t") & (spread.loss == "crps")].iloc[0]
    dm = pd.DataFrame(data["dm"])
    sel = dm[(dm.horizon == 5) & (dm.other == "har_t") & (dm.loss == "crps") & (dm.symbol == "MSFT")]
    assert row["ratio_min"] == pytest.approx(sel["loss_ratio"].min())
    assert row["p_better_max"] == pytest.approx(sel["p_better"].max())
    block = data["symbols"]["MSFT"]["blocks"][0]["fit_info"]
    # each seed's own fit (with one epoch both may keep the untrained baseline, so compare the seeds)
    assert (block["mamba_s1"]["seed"], block["mamba_s2"]["seed"]) == (1, 2)


def test_data_check_and_the_backtest_judge_the_same_rows(tmp_path, capsys):
    """Issue 14, finding 10: gaps older than the last 2000 days. `data check` says which rows it read, `--days all`
    reads the backtest's, and the backtest refuses what that check refuses, in one line, before any refit."""
    rng = np.random.default_rng(3)
    dates = pd.bdate_range("2005-01-03", periods=3000)
    close = 40 * np.exp(np.cumsum(rng.normal(0.0002, 0.015, 3000)))
    close[100:300] = np.nan                                    # 200 of 3000 missing (6.7%), all before the last 2000
    csv = tmp_path / "zzz.csv"
    pd.DataFrame({"symbol": "ZZZ", "date": dates, "close": close}).to_csv(csv, index=False)
    data = ["--source", "csv", "--data", str(csv)]
    assert main(["data", "check", "--symbols", "ZZZ", *data]) == 0
    assert "(last 2000 days: the rows train reads by default; --days all checks what backtest reads)" in \
        capsys.readouterr().out
    assert main(["data", "check", "--symbols", "ZZZ", "--days", "all", *data]) == 1
    assert "200 of 3000 prices missing" in capsys.readouterr().out
    assert main(["backtest", "--symbols", "ZZZ", "--no-model", "--report", str(tmp_path / "rep"), *data]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "ZZZ: 200 of 3000 prices missing" in captured.err
    assert "refit" not in captured.out


def test_the_backtest_forward_fills_a_few_missing_closes_as_training_does():
    from mambacast.evaluate.backtest import checked_prices

    dates = pd.bdate_range("2020-01-01", periods=400)
    close = 50 * np.exp(np.cumsum(np.random.default_rng(4).normal(0, 0.01, 400)))
    close[[0, 1, 200]] = np.nan
    (frame,) = checked_prices({"ZZZ": pd.DataFrame({"close": close}, index=dates)}, end="2021-01-01").values()
    assert frame.index[0] == dates[2] and frame.index[-1] <= pd.Timestamp("2021-01-01")
    assert frame["close"].iloc[198] == close[199] and np.isfinite(frame["close"]).all()


def test_the_backtest_cuts_a_leading_stale_stretch_and_still_refuses_a_later_one(caplog):
    from mambacast.data.errors import DataQualityError
    from mambacast.evaluate.backtest import checked_prices

    dates = pd.bdate_range("2000-01-03", periods=1500)
    close = 50 * np.exp(np.cumsum(np.random.default_rng(5).normal(0, 0.01, 1500)))
    close[:300] = np.repeat(close[:300:30], 30)          # RRC-like: 300 days quoted once a month
    (frame,) = checked_prices({"ZZZ": pd.DataFrame({"close": close}, index=dates)}).values()
    # the cut ends where the last 60-return window stops being mostly unchanged: within 30 days after the stretch
    assert dates[300] <= frame.index[0] <= dates[330] and frame.index[-1] == dates[-1]
    assert "ZZZ: the first" in caplog.text and "stale quotes" in caplog.text
    late = close.copy()
    late[:300] = 50 * np.exp(np.cumsum(np.random.default_rng(6).normal(0, 0.01, 300)))
    late[1000:1300] = late[1000]                           # stale in the second half: refused as before
    with pytest.raises(DataQualityError, match="ZZZ: .*stale"):
        checked_prices({"ZZZ": pd.DataFrame({"close": late}, index=dates)})
