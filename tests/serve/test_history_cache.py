"""The service's price-history cache: concurrent misses read the source once, expired entries are read again."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from mambacast.serve import runtime
from mambacast.store import ModelStore


def test_concurrent_misses_read_the_source_once(tmp_path, monkeypatch):
    reads: list[str] = []
    gate = threading.Event()

    def slow_load(symbol: str, **_: object) -> pd.DataFrame:
        reads.append(symbol)
        gate.wait(5)                      # every other request arrives while this read is under way
        return pd.DataFrame({"close": [1.0, 2.0, 3.0]})

    monkeypatch.setattr(runtime, "load_prices", slow_load)
    cache = runtime.HistoryCache(ModelStore(tmp_path), ttl_s=0.5)
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(cache.get, "AAPL") for _ in range(16)]
        time.sleep(0.1)
        gate.set()
        results = [f.result() for f in futures]
    assert reads == ["AAPL"]
    assert all(frame is results[0][0] and at == results[0][1] for frame, at in results)
    assert cache.get("MSFT")[0] is not results[0][0] and reads == ["AAPL", "MSFT"]     # per symbol
    time.sleep(0.55)
    cache.get("AAPL")                                                                 # expired: read again
    assert reads == ["AAPL", "MSFT", "AAPL"]
