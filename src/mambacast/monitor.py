"""Live accuracy monitoring: every served forecast logged, then scored once its horizon's price is known.

The log is one SQLite file (stdlib `sqlite3`, WAL journal). Each served forecast adds a row per horizon
with its served law (Student-t `loc`, `scale`, `df` of the log-return from `current_price`), its 80%
interval and median price; an options-chain answer adds its probabilities P(S_T > K); a model's forecast
also logs the shadow baselines' forecasts of the same request (the guide's "A/B testing against a
baseline", scored on live traffic without serving them). `score(load)`
fills in, for every row whose `as_of + h` trading days is in a later price history, the realised price
and: the CRPS of the log-return (closed form, `evaluate.metrics.crps_student_t`), whether the 80%
interval covered it, the squared error of the median log-return and of "no change" (0), and the Brier
score of each served probability. `report()` aggregates per symbol, model version and horizon.

Writes go through one background thread that commits whatever has queued up in one transaction, so a
request pays a queue put, not a disk sync; `flush()` waits until everything queued is written.
"""

from __future__ import annotations

import logging
import math
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from .data.sources import as_close_array
from .evaluate.baselines import HistoricalVolGaussian, Momentum
from .evaluate.metrics import crps_student_t
from .predict import PredictionResult

__all__ = ["ForecastLog", "REPORT_COLUMNS", "SHADOW_BASELINES"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS forecasts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    served_at TEXT NOT NULL,
    symbol TEXT NOT NULL,
    as_of TEXT,
    current_price REAL NOT NULL,
    horizon INTEGER NOT NULL,
    model_version TEXT,
    source TEXT NOT NULL,
    role TEXT,
    loc REAL NOT NULL, scale REAL NOT NULL, df REAL NOT NULL,
    median REAL NOT NULL, lo80 REAL NOT NULL, hi80 REAL NOT NULL,
    realised REAL, crps REAL, covered INTEGER, se REAL, se_nochange REAL, scored_at TEXT
);
CREATE INDEX IF NOT EXISTS forecasts_unscored ON forecasts (scored_at, symbol);
CREATE TABLE IF NOT EXISTS probabilities (
    forecast_id INTEGER NOT NULL REFERENCES forecasts (id),
    strike REAL NOT NULL,
    p_above REAL NOT NULL,
    brier REAL
);
CREATE INDEX IF NOT EXISTS probabilities_forecast ON probabilities (forecast_id);
"""

#: baselines shadow-scored beside every model forecast: cheap (no fit), so the writer thread keeps up;
#: GARCH(1,1)-t is half of the served law already (docs/model.md), its refits too slow to run per request
SHADOW_BASELINES = {"momentum": Momentum, "hist_vol": HistoricalVolGaussian}

#: the columns of `report()`, in order
REPORT_COLUMNS = ("symbol", "model_version", "role", "horizon", "forecasts", "served", "scored", "crps",
                  "coverage80", "brier", "n_probabilities", "mse", "mse_nochange")

#: a logged forecast: (role, result, served); role "champion" or "challenger", served False for a shadow
Logged = tuple[str, PredictionResult, bool]


#: a row's role; logs written before champion/challenger have none: their shadows were baselines
_ROLE = "COALESCE(f.role, CASE WHEN f.source = 'shadow' THEN 'baseline' ELSE 'champion' END)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ForecastLog:
    """The SQLite log of served forecasts and their scores (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(forecasts)")}
            if "role" not in columns:             # a log written before champion/challenger
                conn.execute("ALTER TABLE forecasts ADD COLUMN role TEXT")
        # items: a forecast to write, an Event to set once everything before it is written, None to stop
        self._queue: queue.Queue[tuple[str, list[Logged], tuple[float, ...], Any] | threading.Event | None] = \
            queue.Queue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")       # readers (the report, /metrics) never block the writer
        conn.execute("PRAGMA synchronous=NORMAL")     # WAL + NORMAL: durable across a process crash
        return conn

    # ---- writing ------------------------------------------------------------------------------
    def record(self, request_id: str, forecasts: PredictionResult | Sequence[Logged], strikes: Sequence[float] = (),
               history: Any = None) -> None:
        """Queue one request's forecasts (and the strikes whose probabilities were asked) for writing.

        `forecasts`: (role, result, served) per model that forecast the request (the champion, and a
        challenger, served or in the shadow), or one served champion result. With the request's price
        `history`, a served model forecast is logged with the shadow baselines' forecasts of the same
        request (`SHADOW_BASELINES`, model_version "baseline:<name>", source "shadow"), so the report
        scores the models against them on the same live requests.
        """
        logged = [("champion", forecasts, True)] if isinstance(forecasts, PredictionResult) else list(forecasts)
        served = next((r for _, r, s in logged if s), logged[0][1])
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name="mambacast-forecast-log", daemon=True)
                self._writer.start()
        self._queue.put((request_id, logged, tuple(float(k) for k in strikes),
                         history if served.source == "mamba" else None))

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every forecast queued so far is committed."""
        with self._writer_lock:
            running = self._writer is not None and self._writer.is_alive()
        if running:
            done = threading.Event()
            self._queue.put(done)
            done.wait(timeout)

    def close(self) -> None:
        """Write what is queued and stop the writer thread."""
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None and writer.is_alive():
            self._queue.put(None)
            writer.join(timeout=30.0)

    def _write_loop(self) -> None:
        conn = self._connect()
        try:
            while True:
                items = [self._queue.get()]
                while True:   # everything queued meanwhile goes into the same transaction
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                rows = [i for i in items if isinstance(i, tuple)]
                try:
                    with conn:
                        for request_id, logged, strikes, history in rows:
                            for role, result, served in logged:
                                self._insert(conn, request_id, result, strikes, role, served)
                            if history is not None:
                                self._insert_shadows(conn, request_id, logged[0][1], strikes, history)
                except sqlite3.Error:
                    log.exception("could not write %d forecast(s) to %s", len(rows), self.path)
                for item in items:
                    if isinstance(item, threading.Event):
                        item.set()
                if any(item is None for item in items):
                    return
        finally:
            conn.close()

    @staticmethod
    def _insert(conn: sqlite3.Connection, request_id: str, result: PredictionResult, strikes: Sequence[float],
                role: str, served: bool) -> None:
        served_at = _now()
        for h in result.horizons:
            key = f"{h}d"
            loc, scale, df = result.distribution(key)
            lo, hi = result.interval(key, 0.8)
            cur = conn.execute(
                "INSERT INTO forecasts (request_id, served_at, symbol, as_of, current_price, horizon, model_version,"
                " source, role, loc, scale, df, median, lo80, hi80) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (request_id, served_at, result.symbol, result.as_of, result.current_price, h, result.model_version,
                 result.source if served else "shadow", role, loc, scale, df if math.isfinite(df) else 1e300,
                 result.prices[key], lo, hi))
            if strikes:
                p = result.prob_above_many(strikes, key)
                conn.executemany("INSERT INTO probabilities (forecast_id, strike, p_above) VALUES (?,?,?)",
                                 [(cur.lastrowid, float(k), float(v)) for k, v in zip(strikes, p, strict=True)])

    @staticmethod
    def _insert_shadows(conn: sqlite3.Connection, request_id: str, result: PredictionResult,
                        strikes: Sequence[float], history: Any) -> None:
        """The baselines' Gaussian forecasts of the same request, logged beside the served one."""
        closes = as_close_array(history)
        served_at = _now()
        z80 = float(special.ndtri(0.9))
        for name, baseline in SHADOW_BASELINES.items():
            try:
                forecast = baseline().fit(closes).predict(closes, result.horizons)
            except ValueError as exc:        # e.g. too short a history for its window: no shadow this time
                log.debug("shadow %s skipped for %s: %s", name, result.symbol, exc)
                continue
            for h, mu, sd in zip(result.horizons, np.ravel(forecast.mean), np.ravel(forecast.scale), strict=True):
                price = result.current_price
                cur = conn.execute(
                    "INSERT INTO forecasts (request_id, served_at, symbol, as_of, current_price, horizon, "
                    "model_version, source, role, loc, scale, df, median, lo80, hi80) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (request_id, served_at, result.symbol, result.as_of, price, h, f"baseline:{name}", "shadow",
                     "baseline",
                     float(mu), float(sd), 1e300, price * math.exp(mu), price * math.exp(mu - z80 * sd),
                     price * math.exp(mu + z80 * sd)))
                if strikes:
                    p = special.ndtr(-(np.log(np.asarray(strikes) / price) - mu) / sd)
                    conn.executemany("INSERT INTO probabilities (forecast_id, strike, p_above) VALUES (?,?,?)",
                                     [(cur.lastrowid, float(k), float(v)) for k, v in zip(strikes, p, strict=True)])

    # ---- scoring ------------------------------------------------------------------------------
    def score(self, load_history: Callable[[str], pd.DataFrame | pd.Series]) -> int:
        """Score every unscored forecast whose outcome is in `load_history(symbol)`; returns how many were scored.

        `load_history` returns a later history with a DatetimeIndex (a close column or a Series). The
        forecast made at `as_of` (its last close) for horizon h is scored against the close h rows after
        `as_of` in that history; forecasts without `as_of`, or whose `as_of` is not a row of it, wait.
        """
        self.flush()
        with self._connect() as conn:
            rows = conn.execute("SELECT id, symbol, as_of, current_price, horizon, loc, scale, df, lo80, hi80 "
                                "FROM forecasts WHERE scored_at IS NULL AND as_of IS NOT NULL").fetchall()
            by_symbol: dict[str, list[tuple]] = {}
            for row in rows:
                by_symbol.setdefault(row[1], []).append(row)
            scored = 0
            for symbol, todo in by_symbol.items():
                try:
                    history = load_history(symbol)
                except (ValueError, FileNotFoundError) as exc:
                    log.warning("%s: no later prices to score against (%s)", symbol, exc)
                    continue
                closes = history["close"] if isinstance(history, pd.DataFrame) else history
                index = pd.DatetimeIndex(closes.index)
                values = closes.to_numpy(dtype=np.float64)
                updates, probs = [], []
                for fid, _, as_of, price, h, loc, scale, df, lo, hi in todo:
                    pos = index.get_indexer([pd.Timestamp(as_of)])[0]
                    if pos < 0 or pos + h >= len(values):
                        continue
                    realised = float(values[pos + h])
                    r = math.log(realised / price)
                    nu = math.inf if df >= 1e300 else df
                    crps = float(crps_student_t(np.array([r]), nu, loc, scale)[0])
                    updates.append((realised, crps, int(lo <= realised <= hi), (r - loc) ** 2, r ** 2, _now(), fid))
                    probs.append((realised, fid))
                conn.executemany("UPDATE forecasts SET realised=?, crps=?, covered=?, se=?, se_nochange=?, "
                                 "scored_at=? WHERE id=?", updates)
                # outcome (strike < realised) is 0 or 1 in SQL; Brier = (p - outcome)^2
                conn.executemany("UPDATE probabilities SET brier = (p_above - (strike < ?)) * (p_above - (strike < ?)) "
                                 "WHERE forecast_id=?", [(r, r, fid) for r, fid in probs])
                scored += len(updates)
        return scored

    # ---- reading ------------------------------------------------------------------------------
    def report(self) -> list[dict[str, Any]]:
        """Served and scored counts and mean scores per symbol, model version and horizon (REPORT_COLUMNS)."""
        self.flush()
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT f.symbol, COALESCE(f.model_version, f.source), {_ROLE}, f.horizon, COUNT(*), "
                "SUM(f.source != 'shadow'), COUNT(f.scored_at), "
                "AVG(f.crps), AVG(f.covered), AVG(p.brier), COUNT(p.brier), AVG(f.se), AVG(f.se_nochange) "
                "FROM forecasts f LEFT JOIN (SELECT forecast_id, AVG(brier) AS brier FROM probabilities "
                "WHERE brier IS NOT NULL GROUP BY forecast_id) p ON p.forecast_id = f.id "
                "GROUP BY 1, 2, 3, 4 ORDER BY 1, 3 DESC, 2, 4").fetchall()
            nprob = dict(conn.execute(
                f"SELECT f.symbol || '|' || COALESCE(f.model_version, f.source) || '|' || {_ROLE} || '|' || f.horizon, "
                "COUNT(*) FROM probabilities p JOIN forecasts f ON f.id = p.forecast_id WHERE p.brier IS NOT NULL "
                "GROUP BY 1").fetchall())
        out = []
        for row in rows:
            d = dict(zip(REPORT_COLUMNS, row, strict=True))
            d["n_probabilities"] = nprob.get(f"{d['symbol']}|{d['model_version']}|{d['role']}|{d['horizon']}", 0)
            out.append(d)
        return out

    def rolling(self, window: int = 250) -> dict[int, dict[str, float]]:
        """Per horizon: the CRPS and 80% coverage over its latest `window` scored forecasts, and their count."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT horizon, AVG(crps), AVG(covered), COUNT(*) FROM (SELECT horizon, crps, covered, ROW_NUMBER() "
                "OVER (PARTITION BY horizon ORDER BY id DESC) AS k FROM forecasts WHERE scored_at IS NOT NULL "
                "AND source != 'shadow') "
                "WHERE k <= ? GROUP BY horizon ORDER BY horizon", (window,)).fetchall()
        return {int(h): {"crps": float(c), "coverage80": float(v), "n": int(n)} for h, c, v, n in rows}

    def rolling_by_arm(self, window: int = 250) -> dict[tuple[str, int], dict[str, float]]:
        """Per arm ("champion", "challenger", "baseline:<name>") and horizon, served or in the shadow: the CRPS
        and 80% coverage over its latest `window` scored forecasts, and their count (/metrics compares them)."""
        arm = f"CASE WHEN {_ROLE} = 'baseline' THEN model_version ELSE {_ROLE} END"
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT arm, horizon, AVG(crps), AVG(covered), COUNT(*) FROM (SELECT " + arm + " AS arm, horizon, "
                "crps, covered, ROW_NUMBER() OVER (PARTITION BY " + arm + ", horizon ORDER BY id DESC) AS k "
                "FROM forecasts f WHERE scored_at IS NOT NULL) WHERE k <= ? GROUP BY arm, horizon "
                "ORDER BY arm, horizon", (window,)).fetchall()
        return {(str(a), int(h)): {"crps": float(c), "coverage80": float(v), "n": int(n)} for a, h, c, v, n in rows}
