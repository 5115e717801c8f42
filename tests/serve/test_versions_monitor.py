"""Model versions (promote during a stream of requests), live monitoring (log then score), the service CLI."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import pytest

from mambacast.cli import main
from mambacast.data.sources import load_prices
from mambacast.serve.app import create_app
from mambacast.store import ModelStore, StoreError
from mambacast.versions import ModelVersions

from .conftest import LiveServer


def test_versions_are_recorded_promoted_and_rolled_back(store_copy):
    store = ModelStore(store_copy)
    versions = ModelVersions(store)
    first, second = (v.version for v in versions.list("AAPL"))
    assert versions.current("AAPL") == second
    assert versions.promote("AAPL", first) == second
    assert versions.current("AAPL") == first and store.is_complete("AAPL")     # weights match the metadata
    assert store.load_metadata("AAPL")["weights_sha256"].startswith(first.split("-")[1])
    assert versions.rollback("AAPL") == second and versions.current("AAPL") == second
    with pytest.raises(StoreError, match="has no version 'v1'"):
        versions.promote("AAPL", "v1")
    # immutable: recording again leaves the version's files as they were
    before = (store_copy / "versions" / "AAPL" / second / "weights.safetensors").stat().st_mtime_ns
    assert versions.record("AAPL") == second
    assert (store_copy / "versions" / "AAPL" / second / "weights.safetensors").stat().st_mtime_ns == before


def test_models_cli(store_copy, capsys):
    assert main(["models", "list", "AAPL", "--save-dir", str(store_copy)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["symbol", "version"] and len(out) == 3 and out[2].endswith("*")
    first = out[1].split()[1]
    assert main(["models", "promote", "AAPL", first, "--save-dir", str(store_copy)]) == 0
    assert f"{first} is current" in capsys.readouterr().out
    assert main(["models", "rollback", "AAPL", "--save-dir", str(store_copy)]) == 0
    assert "rolled back to" in capsys.readouterr().out
    assert main(["models", "promote", "AAPL", "--save-dir", str(store_copy)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_promote_during_a_stream_of_requests_fails_none(store_copy):
    versions = ModelVersions(ModelStore(store_copy))
    first, second = (v.version for v in versions.list("AAPL"))
    statuses: list[int] = []
    served: list[str] = []
    stop = threading.Event()
    app = create_app(store_copy, reload_interval_s=0.05)
    with LiveServer(app) as live:
        def stream() -> None:
            with live.client() as c:
                # the cap bounds the load; it is far above what the switch needs, so the stream cannot end
                # before the promoted version is served (a cap of 400 once did, on an idle machine)
                while not stop.is_set() and len(statuses) < 4000:
                    r = c.post("/v1/forecast", json={"symbol": "AAPL", "horizons": [1]})
                    statuses.append(r.status_code)
                    served.append(r.json().get("model_version", ""))

        threads = [threading.Thread(target=stream) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        versions.promote("AAPL", first)
        deadline = time.monotonic() + 20
        while not any(_sha(v) == _sha8(first) for v in served[-8:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(30)
        models = live.client().get("/v1/models").json()["models"]
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests, statuses {set(statuses)}"
    shas = [_sha(v) for v in served]
    assert shas[0] == _sha8(second) and shas[-1] == _sha8(first)      # switched, without a restart
    switch = shas.index(_sha8(first))
    assert set(shas[:switch]) == {_sha8(second)} and set(shas[switch + 8:]) == {_sha8(first)}   # and stays switched
    assert _sha(models[0]["version"]) == _sha8(first)


def _sha(served_version: str) -> str:
    """The weights-hash prefix of a served model version ("<training date>/<sha12>")."""
    return served_version.split("/")[-1][:8]


def _sha8(version_id: str) -> str:
    """The weights-hash prefix of a stored version id ("v<time>-<sha8>")."""
    return version_id.split("-")[-1]


def test_forecasts_logged_then_scored_from_a_later_price_file(store_copy, tmp_path, capsys):
    history = load_prices("AAPL", days=2000)
    log_path = tmp_path / "log.sqlite"
    cut = len(history) - 40                            # forecasts from 40 days before the end: 1-30d outcomes known
    origins = [cut - 5 * k for k in range(6)]
    with LiveServer(create_app(store_copy, log_path=log_path, reload_interval_s=0)) as live, live.client() as c:
        for t in origins:
            closes = history["close"].iloc[:t + 1]
            r = c.post("/v1/forecast", json={"symbol": "AAPL", "prices": closes.tolist(),
                                             "as_of": closes.index[-1].date().isoformat()})
            assert r.status_code == 200
        strikes = [float(history["close"].iloc[cut]) * m for m in (0.9, 1.0, 1.1)]
        closes = history["close"].iloc[:cut + 1]
        assert c.post("/v1/probabilities", json={"symbol": "AAPL", "prices": closes.tolist(), "strikes": strikes,
                                                 "as_of": closes.index[-1].date().isoformat()}).status_code == 200
        c.post("/v1/forecast", json={"symbol": "AAPL", "prices": closes.tolist()})      # undated: never scored
        later = tmp_path / "later.csv"
        frame = history[["close"]].reset_index().assign(symbol="AAPL")
        frame.to_csv(later, index=False)
        assert main(["monitor", "--log", str(log_path), "--score", "--source", "csv", "--data", str(later),
                     "--report", "--out", str(tmp_path / "report")]) == 0
        out = capsys.readouterr().out
        text = c.get("/metrics").text
    # 7 dated forecasts x 4 horizons, each served; its shadow baselines are added when it is scored
    assert "scored 28 forecast horizon(s)" in out
    assert (tmp_path / "report" / "monitor.csv").exists()
    with sqlite3.connect(log_path) as db:
        rows = db.execute("SELECT as_of, horizon, current_price, realised, crps, covered, se, se_nochange, lo80, "
                          "hi80, loc FROM forecasts WHERE scored_at IS NOT NULL").fetchall()
        unscored = db.execute("SELECT COUNT(*) FROM forecasts WHERE scored_at IS NULL").fetchone()[0]
        briers = db.execute("SELECT strike, p_above, brier FROM probabilities").fetchall()
    assert len(rows) == 28 * 4 and unscored == 4
    closes = history["close"]
    for as_of, h, price, realised, crps, covered, se, se0, lo, hi, loc in rows:
        pos = closes.index.get_loc(np.datetime64(as_of))
        assert realised == pytest.approx(closes.iloc[pos + h])       # the close h trading days after as_of
        assert crps > 0 and covered == int(lo <= realised <= hi)
        assert se0 == pytest.approx(np.log(realised / price) ** 2)
        assert se == pytest.approx((np.log(realised / price) - loc) ** 2)
    realised_30 = float(closes.iloc[cut + 30])
    assert len(briers) == 48                                   # 3 strikes x 4 horizons x (model + 3 baselines)
    for _strike, p, brier in briers:
        assert 0 <= p <= 1 and brier is not None
    assert any(b == pytest.approx((p - (realised_30 > k)) ** 2) for k, p, b in briers)
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("AAPL") and ln.split()[3] == "30"]
    assert {ln[1] for ln in lines} >= {"baseline:momentum", "baseline:hist_vol", "baseline:garch_t"}
    assert [ln[2] for ln in lines] == ["champion", "baseline", "baseline", "baseline"]
    # forecasts, served, scored: the baselines forecast exactly the champion's scored requests, in the shadow
    assert [ln[4:7] for ln in lines] == [["8", "8", "7"]] + [["7", "0", "7"]] * 3
    assert "mambacast_live_coverage80{horizon=\"30\"}" in text and "mambacast_live_crps{horizon=\"1\"}" in text


def test_serve_cli_one_line_errors(model_store, tmp_path, capsys):
    import socket

    cases = [["--save-dir", str(tmp_path / "none")], ["--save-dir", str(model_store), "--port", "70000"],
             ["--save-dir", str(model_store), "--workers", "0"], ["--save-dir", str(tmp_path)]]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases.append(["--save-dir", str(model_store), "--port", str(busy.getsockname()[1])])
        for args in cases:
            assert main(["serve", *args]) == 2
            err = capsys.readouterr().err
            assert err.startswith("mambacast: error: ") and err.count("\n") == 1, err
    assert "in use" in err
