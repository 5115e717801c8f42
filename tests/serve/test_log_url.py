"""The forecast log at a SQLAlchemy URL (SQLite here: no other database runs in the tests), its bound, its errors."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("sqlalchemy", reason="the forecast log needs SQLAlchemy (the serve extra)")

import sqlalchemy as sa  # noqa: E402

from mambacast.cli import main  # noqa: E402
from mambacast.data.sources import load_prices  # noqa: E402
from mambacast.monitor import ForecastLog  # noqa: E402
from mambacast.serve.app import create_app  # noqa: E402

from .conftest import LiveServer  # noqa: E402


def test_log_url_round_trip_logged_then_scored(store_copy, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'db' / 'forecasts.db'}"
    history = load_prices("AAPL", days=2000)
    cut = len(history) - 40
    app = create_app(store_copy, log_path=url, reload_interval_s=0)
    with LiveServer(app) as live, live.client() as c:
        for t in (cut - 5, cut):
            closes = history["close"].iloc[:t + 1]
            assert c.post("/v1/forecast", json={"symbol": "AAPL", "prices": closes.tolist(),
                                                "as_of": closes.index[-1].date().isoformat()}).status_code == 200
        closes = history["close"].iloc[:cut + 1]
        strikes = [float(closes.iloc[-1]) * m for m in (0.95, 1.05)]
        assert c.post("/v1/probabilities", json={"symbol": "AAPL", "prices": closes.tolist(), "strikes": strikes,
                                                 "as_of": closes.index[-1].date().isoformat()}).status_code == 200
        app.state.service.forecast_log.flush()
        metrics = c.get("/metrics").text
    assert "mambacast_log_written_total 3" in metrics and "mambacast_log_dropped_total 0" in metrics
    later = tmp_path / "later.csv"
    history[["close"]].reset_index().assign(symbol="AAPL").to_csv(later, index=False)
    assert main(["monitor", "--log-url", url, "--score", "--source", "csv", "--data", str(later), "--report"]) == 0
    out = capsys.readouterr().out
    assert "scored 12 forecast horizon(s)" in out
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        by_role = dict(conn.execute(sa.text("SELECT role, COUNT(scored_at) FROM forecasts GROUP BY role")).all())
        briers = conn.execute(sa.text("SELECT COUNT(*) FROM probabilities WHERE brier IS NOT NULL")).scalar()
    engine.dispose()
    assert by_role == {"champion": 12, "baseline": 36}
    assert briers == 2 * 4 * 4                       # 2 strikes x 4 horizons x (champion + 3 baselines)
    assert sum(ln.startswith("AAPL") for ln in out.splitlines()) == 4 * 4


def test_a_full_log_queue_drops_and_counts_never_blocks(tmp_path, monkeypatch):
    from mambacast.predict import PredictionResult

    flog = ForecastLog(tmp_path / "log.sqlite", max_pending=1)
    release, started = threading.Event(), threading.Event()

    def slow_write(requests):
        started.set()
        release.wait(10)

    monkeypatch.setattr(flog, "_write", slow_write)
    result = PredictionResult.__new__(PredictionResult)     # never written: the write is held, then skipped
    assert flog.record("a", [("champion", result, True)])
    assert started.wait(10)                                   # the writer holds "a"; the queue has room for one
    assert flog.record("b", [("champion", result, True)])
    assert not flog.record("c", [("champion", result, True)])     # full: dropped, counted, not blocked
    assert flog.dropped == 1 and flog.pending == 1
    release.set()
    flog.flush()
    assert flog.written == 2 and flog.failed == 0
    flog.close()


def test_bad_log_urls_are_one_line_errors(model_store, tmp_path, capsys):
    store = ["--save-dir", str(model_store)]
    cases = {("--log-url", "forecasts.sqlite"): "is not a URL",
             ("--log-url", "nosuchdb://host/db"): "cannot be used",
             ("--log-url", "postgresql+nosuchdriver://u@127.0.0.1:1/db"): "cannot be used",
             ("--log-url", f"sqlite:///{tmp_path}"): "cannot be opened",         # a folder, not a file
             ("--log", str(tmp_path / "a.sqlite"), "--log-url", "sqlite:///x"): "cannot be combined",
             ("--no-log", "--log-url", "sqlite:///x"): "cannot be combined"}
    for args, reason in cases.items():
        assert main(["serve", *store, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("mambacast: error: ") and err.count("\n") == 1 and reason in err, err
    assert main(["monitor", "--log-url", "nosuchdb://x", "--report"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be used" in err
