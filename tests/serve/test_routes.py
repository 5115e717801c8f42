"""Every route of the forecast service, over HTTP to a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import math
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from mambacast import MambaPredictor
from mambacast.data.sources import load_prices

KEYS = ["1d", "5d", "10d", "30d"]


@pytest.fixture(scope="module")
def history():
    return load_prices("AAPL", days=2000)      # what the service reads from the sample source


@pytest.fixture(scope="module")
def direct(model_store, history):
    """MambaPredictor's own answer for the service's default AAPL request."""
    predictor = MambaPredictor(["AAPL"], model_dir=model_store)
    try:
        yield asyncio.run(predictor.predict_detailed("AAPL", history, float(history["close"].iloc[-1])))
    finally:
        predictor.close()


def test_health_and_readiness(client):
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": ["AAPL"]}


def test_models_lists_the_loaded_version(client, direct):
    body = client.get("/v1/models").json()
    assert [m["symbol"] for m in body["models"]] == ["AAPL"]
    model = body["models"][0]
    assert model["version"] == direct.model_version and model["error"] is None
    assert len(model["data_hash"]) == 64 and model["best_val_crps"] > 0


def test_forecast_equals_the_predictor(client, direct):
    r = client.post("/v1/forecast", json={"symbol": "aapl"})
    assert r.status_code == 200
    body = r.json()
    assert (body["symbol"], body["source"], body["reason"], body["model_version"], body["as_of"]) == \
        ("AAPL", "mamba", None, direct.model_version, direct.as_of)
    assert list(body["prices"]) == KEYS                       # the guide's {'1d', '5d', '10d', '30d'}
    for k in KEYS:
        assert body["prices"][k] == pytest.approx(direct.prices[k], rel=1e-6)
        for q, v in direct.quantiles[k].items():
            assert body["quantiles"][k][f"{q:g}"] == pytest.approx(v, rel=1e-6)
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])


def test_forecast_from_sent_prices_equals_the_predictor(client, model_store, history):
    closes = history["close"].to_numpy()[-900:]
    predictor = MambaPredictor(["AAPL"], model_dir=model_store)
    try:
        expected = asyncio.run(predictor.predict_detailed("AAPL", closes, 150.0, quantiles=(0.1, 0.9)))
    finally:
        predictor.close()
    body = client.post("/v1/forecast", json={"symbol": "AAPL", "prices": closes.tolist(), "current_price": 150.0,
                                             "horizons": [30, 5], "quantiles": [0.9, 0.1]}).json()
    assert list(body["prices"]) == ["30d", "5d"] and body["current_price"] == 150.0
    for k in ("30d", "5d"):
        assert body["prices"][k] == pytest.approx(expected.prices[k], rel=1e-6)
        assert body["quantiles"][k] == pytest.approx({"0.1": expected.quantiles[k][0.1],
                                                      "0.9": expected.quantiles[k][0.9]}, rel=1e-6)


@pytest.mark.parametrize("body, kind", [
    ({"symbol": "IBM"}, "no usable model"),                                  # no model stored for IBM
    ({"symbol": "AAPL", "prices": [100.0, 101.0, 100.5, 102.0]}, "history has 4 days"),
])
def test_momentum_fallback_says_why(client, body, kind):
    r = client.post("/v1/forecast", json=body).json()
    assert r["source"] == "momentum" and r["model_version"] is None and r["reason"].startswith(kind)
    assert list(r["prices"]) == KEYS


def test_probabilities_of_an_options_chain(client, direct):
    spot = direct.current_price
    strikes = list(np.round(np.linspace(0.7, 1.3, 50) * spot, 2))
    r = client.post("/v1/probabilities", json={"symbol": "AAPL", "strikes": strikes})
    assert r.status_code == 200
    body = r.json()
    assert body["strikes"] == strikes and list(body["horizons"]) == KEYS
    for k, table in body["horizons"].items():
        above, below = np.array(table["above"]), np.array(table["below"])
        assert np.allclose(above + below, 1.0)
        assert np.all(np.diff(above) <= 0)                        # higher strike, less likely to finish above
        for i in (0, 17, 49):
            assert above[i] == pytest.approx(direct.prob_above(strikes[i], k), rel=1e-6, abs=1e-9)


def test_metrics_exposition(client):
    client.post("/v1/forecast", json={"symbol": "IBM"})          # a fallback
    client.post("/v1/forecast", json={"symbol": "AAPL", "horizons": [7]})   # a 422
    text = client.get("/metrics").text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
    assert re.search(r'^mambacast_requests_total\{route="/v1/forecast",method="POST",status="200"\} \d+$', text, re.M)
    assert re.search(r'^mambacast_requests_total\{route="/v1/forecast",method="POST",status="422"\} \d+$', text, re.M)
    assert re.search(r'^mambacast_fallbacks_total\{reason="no_model"\} \d+$', text, re.M)
    assert re.search(r'^mambacast_model_loaded\{symbol="AAPL",version="[^"]+"\} 1$', text, re.M)
    # the histogram's buckets are cumulative and end at the count
    buckets = [int(float(v)) for v in re.findall(
        r'^mambacast_request_duration_seconds_bucket\{route="/v1/forecast",le="[^"]+"\} (\S+)$', text, re.M)]
    count = int(float(re.search(r'^mambacast_request_duration_seconds_count\{route="/v1/forecast"\} (\S+)$',
                                text, re.M).group(1)))
    assert buckets == sorted(buckets) and buckets[-1] == count > 0


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/forecast", "/v1/probabilities", "/v1/models", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert "ForecastRequest" in spec["components"]["schemas"]


GOOD = {"symbol": "AAPL"}
MALFORMED = [
    ("/v1/forecast", {}, 422, "symbol"),
    ("/v1/forecast", {"symbol": ""}, 422, "symbol"),
    ("/v1/forecast", {"symbol": "AA PL"}, 422, "symbol"),
    ("/v1/forecast", {"symbol": 123}, 422, "symbol"),
    ("/v1/forecast", {"symbol": "ZZZZ"}, 404, "symbol"),                # not in the price source
    ("/v1/forecast", {**GOOD, "prices": [100.0, 101.0]}, 422, "prices"),
    ("/v1/forecast", {**GOOD, "prices": [100.0, -1.0, 101.0]}, 422, "prices"),
    ("/v1/forecast", {**GOOD, "prices": [100.0, 0.0, 101.0]}, 422, "prices"),
    ("/v1/forecast", {**GOOD, "prices": "100,101,102"}, 422, "prices"),
    ("/v1/forecast", {**GOOD, "prices": [100.0, "x", 101.0]}, 422, "prices"),
    ("/v1/forecast", {**GOOD, "prices": [100.0] * 20_001}, 422, "prices"),
    ("/v1/forecast", {**GOOD, "current_price": -5}, 422, "current_price"),
    ("/v1/forecast", {**GOOD, "current_price": 0}, 422, "current_price"),
    ("/v1/forecast", '{"symbol": "AAPL", "current_price": NaN}', 422, "current_price"),
    ("/v1/forecast", '{"symbol": "AAPL", "current_price": Infinity}', 422, "current_price"),
    ("/v1/forecast", {**GOOD, "horizons": [7]}, 422, "horizons"),         # not a model horizon
    ("/v1/forecast", {**GOOD, "horizons": []}, 422, "horizons"),
    ("/v1/forecast", {**GOOD, "horizons": [0]}, 422, "horizons"),
    ("/v1/forecast", {**GOOD, "horizons": [1, 1]}, 422, "horizons"),
    ("/v1/forecast", {**GOOD, "quantiles": [0.0]}, 422, "quantiles"),
    ("/v1/forecast", {**GOOD, "quantiles": [1.5]}, 422, "quantiles"),
    ("/v1/forecast", {**GOOD, "quantiles": [0.5, 0.5]}, 422, "quantiles"),
    ("/v1/forecast", {**GOOD, "quantiles": []}, 422, "quantiles"),
    ("/v1/forecast", {**GOOD, "horizon": 5}, 422, "horizon"),             # misspelt field: refused, not ignored
    ("/v1/forecast", {**GOOD, "as_of": "yesterday"}, 422, "as_of"),
    ("/v1/forecast", "this is not JSON", 422, None),
    ("/v1/forecast", "[1, 2, 3]", 422, None),
    ("/v1/probabilities", GOOD, 422, "strikes"),
    ("/v1/probabilities", {**GOOD, "strikes": []}, 422, "strikes"),
    ("/v1/probabilities", {**GOOD, "strikes": [-100.0]}, 422, "strikes"),
    ("/v1/probabilities", {**GOOD, "strikes": [100.0] * 1001}, 422, "strikes"),
    ("/v1/probabilities", {**GOOD, "strikes": [100.0], "horizons": [2]}, 422, "horizons"),
]


@pytest.mark.parametrize("route, body, status, field", MALFORMED,
                         ids=[f"{i}-{m[3] or 'body'}" for i, m in enumerate(MALFORMED)])
def test_malformed_request_is_a_4xx_naming_the_field(client, route, body, status, field):
    if isinstance(body, str):
        r = client.post(route, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(route, json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail and all(d["msg"] for d in detail)
    assert "Traceback" not in r.text
    if field is not None:
        assert any(field in d["loc"] for d in detail), detail


def test_bodies_are_parsed_as_the_standard_library_parses_them(client, history):
    """The fast JSON parser gives json.loads' values, and where it refuses a body json.loads decides as before."""
    closes = history["close"].to_numpy()[-300:].tolist()
    body = json.dumps({"symbol": "AAPL", "prices": closes})
    fast = client.post("/v1/forecast", content=body, headers={"content-type": "application/json"})
    bom = client.post("/v1/forecast", content=b"\xef\xbb\xbf" + body.encode(),     # json.loads reads a BOM
                      headers={"content-type": "application/json"})
    assert fast.status_code == bom.status_code == 200
    assert fast.json()["prices"] == bom.json()["prices"]
    broken = client.post("/v1/forecast", content='{"symbol": "AAPL",', headers={"content-type": "application/json"})
    assert broken.status_code == 422
    assert broken.json()["detail"] == [{"loc": ["body", 18], "msg": "JSON decode error", "type": "json_invalid"}]


def test_wrong_method_and_unknown_route(client):
    assert client.get("/v1/forecast").status_code == 405
    assert client.get("/v1/nothing").status_code == 404


def test_concurrent_clients_all_answered(server, direct):
    """32 clients x 4 requests at once (forecasts and chains): every answer is 200 and the same forecast."""
    def worker(i: int) -> list[tuple[int, float]]:
        out = []
        with server.client() as c:
            for j in range(4):
                if (i + j) % 4 == 0:
                    r = c.post("/v1/probabilities", json={"symbol": "AAPL", "strikes": [120.0, 130.0]})
                    out.append((r.status_code, math.nan))
                else:
                    r = c.post("/v1/forecast", json={"symbol": "AAPL"})
                    out.append((r.status_code, r.json()["prices"]["30d"]))
        return out

    with ThreadPoolExecutor(32) as pool:
        answers = [a for part in pool.map(worker, range(32)) for a in part]
    assert [s for s, _ in answers] == [200] * 128
    assert all(p == pytest.approx(direct.prices["30d"], rel=1e-6) for _, p in answers if not math.isnan(p))


def test_server_binds_loopback_only(server):
    assert server.sock.getsockname()[0] == "127.0.0.1"
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/healthz").status_code == 200
