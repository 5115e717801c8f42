"""Champion / challenger: a stored version shadow-scored beside the champion, the traffic split, its CLI errors."""

from __future__ import annotations

import sqlite3

import pytest

from mambacast.cli import main
from mambacast.data.sources import load_prices
from mambacast.serve.app import create_app
from mambacast.serve.challenger import CHALLENGER, ChallengerConfig, route
from mambacast.store import ModelStore
from mambacast.versions import ModelVersions

from .conftest import LiveServer


def _versions(store_dir) -> tuple[str, str]:
    first, second = (v.version for v in ModelVersions(ModelStore(store_dir)).list("AAPL"))
    return first, second          # the second is current: the champion


def _sha(served_version: str) -> str:
    return served_version.split("/")[-1][:8]


def test_challenger_is_shadow_scored_beside_the_champion(store_copy, tmp_path, capsys):
    first, second = _versions(store_copy)
    history = load_prices("AAPL", days=2000)
    cut = len(history) - 40
    log_path = tmp_path / "log.sqlite"
    app = create_app(store_copy, log_path=log_path, reload_interval_s=0,
                     challenger=ChallengerConfig(versions={"AAPL": first}))
    with LiveServer(app) as live, live.client() as c:
        models = c.get("/v1/models").json()
        for t in (cut - 10, cut - 5, cut):
            closes = history["close"].iloc[:t + 1]
            r = c.post("/v1/forecast", json={"symbol": "AAPL", "prices": closes.tolist(),
                                             "as_of": closes.index[-1].date().isoformat()})
            assert r.status_code == 200
            assert r.json()["role"] == "champion" and _sha(r.json()["model_version"]) == second.split("-")[1]
        later = tmp_path / "later.csv"
        history[["close"]].reset_index().assign(symbol="AAPL").to_csv(later, index=False)
        assert main(["monitor", "--log", str(log_path), "--score", "--source", "csv", "--data", str(later),
                     "--report"]) == 0
        out = capsys.readouterr().out
        metrics = c.get("/metrics").text
    challenger = models["challenger"]
    assert challenger["symbols"] == ["AAPL"] and challenger["traffic"] == 0 and challenger["versions"] == {
        "AAPL": first}
    assert _sha(challenger["models"][0]["version"]) == first.split("-")[1]
    with sqlite3.connect(log_path) as db:
        rows = db.execute("SELECT role, source, model_version, COUNT(*), COUNT(scored_at) FROM forecasts "
                          "WHERE role != 'baseline' GROUP BY 1, 2, 3 ORDER BY 1").fetchall()
    assert [(r[0], r[1], _sha(r[2]), r[3], r[4]) for r in rows] == [
        ("challenger", "shadow", first.split("-")[1], 12, 12), ("champion", "mamba", second.split("-")[1], 12, 12)]
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("AAPL") and ln.split()[3] == "5"]
    roles = {ln[2]: ln for ln in lines}
    assert set(roles) == {"champion", "challenger", "baseline"}
    assert roles["challenger"][4:7] == ["3", "0", "3"] and roles["champion"][4:7] == ["3", "3", "3"]
    assert 'mambacast_arm_crps{arm="challenger",horizon="5"}' in metrics
    assert 'mambacast_arm_crps{arm="champion",horizon="5"}' in metrics
    assert 'mambacast_arm_coverage80{arm="baseline:momentum",horizon="30"}' in metrics
    assert "mambacast_challenger_shadow_total 3" in metrics


def test_traffic_split_serves_the_challenger_for_its_share(store_copy, tmp_path):
    first, second = _versions(store_copy)
    log_path = tmp_path / "log.sqlite"
    app = create_app(store_copy, log_path=log_path, reload_interval_s=0,
                     challenger=ChallengerConfig(versions={"AAPL": first}, traffic=0.25, seed=7))
    ids = [f"req-{i}" for i in range(200)]
    with LiveServer(app) as live, live.client() as c:
        served = {}
        for rid in ids:
            r = c.post("/v1/forecast", json={"symbol": "AAPL", "horizons": [1]}, headers={"X-Request-ID": rid})
            assert r.status_code == 200 and r.json()["request_id"] == rid
            served[rid] = r.json()
        again = c.post("/v1/forecast", json={"symbol": "AAPL"}, headers={"X-Request-ID": ids[0]}).json()
        metrics = c.get("/metrics").text
    assert again["role"] == served[ids[0]]["role"]                       # deterministic per request id
    challenged = [rid for rid in ids if served[rid]["role"] == "challenger"]
    assert 0.15 <= len(challenged) / len(ids) <= 0.35
    assert challenged == [rid for rid in ids if route(rid, 0.25, 7) == CHALLENGER]
    for body in served.values():
        want = first if body["role"] == "challenger" else second
        assert _sha(body["model_version"]) == want.split("-")[1]
    assert f'mambacast_served_total{{role="challenger"}} {len(challenged) + (again["role"] == "challenger")}' in metrics
    with sqlite3.connect(log_path) as db:
        rows = db.execute("SELECT request_id, role, source FROM forecasts WHERE role != 'baseline' "
                          "AND horizon = 1").fetchall()
    logged = {}
    for rid, role, source in rows:
        logged.setdefault(rid, {})[role] = source
    for rid in ids[1:]:            # both models logged for every request; the served one's source is mamba
        roles = logged[rid]
        assert set(roles) == {"champion", "challenger"}
        assert roles[served[rid]["role"]] == "mamba" and list(roles.values()).count("shadow") == 1


def test_challenger_flags_refused_in_one_line(model_store, capsys):
    first, second = _versions(model_store)
    store = ["--save-dir", str(model_store)]
    cases = {("--challenger", "AAPL"): "use SYMBOL=VERSION",
             ("--challenger", "AAPL=v20200101T000000Z-deadbeef"): "has no version",
             ("--challenger", "MSFT=" + first): "has no version",
             ("--challenger", f"AAPL={second}"): "the champion itself",
             ("--challenger", f"AAPL={first}", "--challenger-traffic", "1.5"): "must be a fraction from 0 to 1",
             ("--challenger", f"AAPL={first}", "--challenger-traffic", "nan"): "must be a fraction from 0 to 1",
             ("--challenger-traffic", "0.2"): "needs a challenger",
             ("--challenger-global",): "no global model",
             ("--challenger", f"AAPL={first}", "--challenger", f"aapl={first}"): "names AAPL twice"}
    for args, reason in cases.items():
        assert main(["serve", *store, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("mambacast: error: ") and err.count("\n") == 1 and reason in err, err


def test_create_app_checks_the_challenger(model_store):
    with pytest.raises(ValueError, match="challenges every symbol"):
        create_app(model_store, challenger=ChallengerConfig(versions={"_GLOBAL": "v1", "AAPL": "v2"}))
