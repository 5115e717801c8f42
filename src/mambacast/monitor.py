"""Live accuracy monitoring: every served forecast logged, then scored once its horizon's price is known.

The log is a database reached through SQLAlchemy Core: a SQLite file by default, or any SQLAlchemy URL
(`postgresql://user@host/db`, ...). One code path for every database: the schema is declared once
below, the queries are portable SQL, and the default SQLite file gets the same WAL settings as before;
a second, stdlib-`sqlite3` path for the default would be one more thing to keep equal and to test.

Each forecast of a request adds a row per horizon with its law (Student-t `loc`, `scale`, `df` of the
log-return from `current_price`), its 80% interval and median price, its model version, whether it was
served (`source` mamba/momentum) or computed in the shadow (`source` "shadow"), and its `role`
(champion, challenger; see `serve.challenger`); an options-chain answer adds its probabilities
P(S_T > K).

`score(load)` fills in, for every row whose `as_of + h` trading days is in a later price history, the
realised price and: the CRPS of the log-return (closed form, `evaluate.metrics.crps_student_t`), whether the
80% interval covered it, the squared error of the median log-return and of "no change" (0), and the
Brier score of each probability. At the same time it adds, for every champion forecast it scores, the
forecasts the shadow baselines (`SHADOW_BASELINES`: momentum, historical volatility, GARCH(1,1)-t) make
for the same request (symbol, as_of, current price, horizon, strikes) from that history up to `as_of`
(role "baseline", model_version "baseline:<name>"), scored alike: the guide's "A/B testing against a
baseline" on the same live requests. They are computed when scoring, not when serving, because they
cost more CPU than the log's write (docs/benchmarks.md) and a GARCH fit per request was out of reach;
at scoring time it is one fit per symbol and day. `report()` aggregates per symbol, model version, role
and horizon.

Writes go through one background thread that commits whatever has queued up in one transaction, so a
request pays a queue put, not a disk sync; `flush()` waits until everything queued is written. The queue
holds at most `max_pending` requests: beyond that (the database has stopped accepting writes for a
long while) a request's forecasts are dropped, counted in `dropped` (`mambacast_log_dropped_total`) and
warned about, so memory stays bounded and serving goes on; a failed transaction is counted in `failed`.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from .evaluate.baselines import GarchT, HistoricalVolGaussian, Momentum
from .evaluate.metrics import crps_student_t
from .forecasts import PredictionResult

__all__ = ["ForecastLog", "REPORT_COLUMNS", "SHADOW_BASELINES", "Logged", "log_url"]

log = logging.getLogger(__name__)

#: baselines scored beside every champion forecast, on the same requests (computed when scoring)
SHADOW_BASELINES = {"momentum": Momentum, "hist_vol": HistoricalVolGaussian, "garch_t": GarchT}
_BASELINE_DAYS = 2000     # closes up to as_of the baselines are fitted on (GARCH-t: about 8 years)

#: the columns of `report()`, in order
REPORT_COLUMNS = ("symbol", "model_version", "role", "horizon", "forecasts", "served", "scored", "crps",
                  "coverage80", "brier", "n_probabilities", "mse", "mse_nochange")

#: a logged forecast: (role, result, served); role "champion" or "challenger", served False for a shadow
Logged = tuple[str, PredictionResult, bool]

_GAUSSIAN_DF = 1e300      # df stored for a Gaussian law (inf is not portable SQL)
_Z80 = float(special.ndtri(0.9))
#: a row's role; logs written before champion/challenger have none: their shadows were baselines
_ROLE = "COALESCE(f.role, CASE WHEN f.source = 'shadow' THEN 'baseline' ELSE 'champion' END)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def log_url(target: str | Path) -> str:
    """A SQLAlchemy URL for `target`: itself if it is one (has '://'), else the SQLite file at that path."""
    text = str(target)
    return text if "://" in text else "sqlite:///" + str(Path(text).expanduser().resolve())


def _tables() -> tuple[Any, Any, Any]:
    import sqlalchemy as sa

    meta = sa.MetaData()
    forecasts = sa.Table(
        "forecasts", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("served_at", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("as_of", sa.String(10)),
        sa.Column("current_price", sa.Float, nullable=False),
        sa.Column("horizon", sa.Integer, nullable=False),
        sa.Column("model_version", sa.String(96)),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("role", sa.String(16)),
        *(sa.Column(c, sa.Float, nullable=False) for c in ("loc", "scale", "df", "median", "lo80", "hi80")),
        sa.Column("realised", sa.Float), sa.Column("crps", sa.Float), sa.Column("covered", sa.Integer),
        sa.Column("se", sa.Float), sa.Column("se_nochange", sa.Float), sa.Column("scored_at", sa.String(32)),
        sa.Index("forecasts_unscored", "scored_at", "symbol"))
    probabilities = sa.Table(
        "probabilities", meta,
        sa.Column("forecast_id", sa.Integer, sa.ForeignKey("forecasts.id"), nullable=False),
        sa.Column("strike", sa.Float, nullable=False),
        sa.Column("p_above", sa.Float, nullable=False),
        sa.Column("brier", sa.Float),
        sa.Index("probabilities_forecast", "forecast_id"))
    return meta, forecasts, probabilities


def _engine(url: str) -> Any:
    """An engine for `url`; ValueError with one line when it cannot be used (driver, syntax, unreachable)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        if sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # a file SQLite connection moves between the writer thread and readers: allow it (writes are serialised)
        engine = sa.create_engine(parsed, connect_args={"timeout": 30.0, "check_same_thread": False} if sqlite
                                  else {})
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError, ValueError, OSError) as exc:
        raise ValueError(f"forecast log {url!r} cannot be used: {str(exc).splitlines()[0]}") from None
    if sqlite:
        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")       # readers (the report, /metrics) never block the writer
            cur.execute("PRAGMA synchronous=NORMAL")     # WAL + NORMAL: durable across a process crash
            cur.close()
    return engine


class ForecastLog:
    """The log of served forecasts and their scores (see the module docstring).

    `target`: a SQLite file path or a SQLAlchemy URL. Raises ValueError (one line) when the database
    cannot be used, or ImportError naming the serve extra when SQLAlchemy is not installed.
    """

    def __init__(self, target: str | Path, max_pending: int = 100_000):
        try:
            import sqlalchemy as sa
        except ImportError:
            raise ImportError("the forecast log needs SQLAlchemy: pip install 'mambacast[serve]'") from None
        self._sa = sa
        self.url = log_url(target)
        self.engine = _engine(self.url)
        self.display = self.engine.url.render_as_string(hide_password=True)
        self._meta, self.forecasts, self.probabilities = _tables()
        try:
            self._meta.create_all(self.engine)
            columns = {c["name"] for c in sa.inspect(self.engine).get_columns("forecasts")}
            if "role" not in columns:             # a log written before champion/challenger
                with self.engine.begin() as conn:
                    conn.execute(sa.text("ALTER TABLE forecasts ADD COLUMN role VARCHAR(16)"))
        except sa.exc.SQLAlchemyError as exc:
            raise ValueError(f"forecast log {self.display} cannot be opened: {str(exc).splitlines()[0]}") from None
        # items: a request's forecasts to write, an Event to set once everything before it is written, None to stop
        # unbounded itself, so flush and close always get their marker in; record() enforces max_pending
        self._queue: queue.Queue[tuple[str, list[Logged], tuple[float, ...]] | threading.Event | None] = \
            queue.Queue()
        self.max_pending = max_pending
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self.written = self.dropped = self.failed = 0      # requests (counted by the writer thread / record)

    @property
    def pending(self) -> int:
        """Requests queued and not written yet."""
        return self._queue.qsize()

    # ---- writing ------------------------------------------------------------------------------
    def record(self, request_id: str, forecasts: PredictionResult | Sequence[Logged],
               strikes: Sequence[float] = ()) -> bool:
        """Queue one request's forecasts (and the strikes whose probabilities were asked) for writing.

        `forecasts`: (role, result, served) per model that forecast the request (the champion, and a
        challenger, served or in the shadow), or one served champion result. Never blocks: False when
        the queue is full and the forecasts were dropped (counted in `dropped`).
        """
        logged = [("champion", forecasts, True)] if isinstance(forecasts, PredictionResult) else list(forecasts)
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name="mambacast-forecast-log", daemon=True)
                self._writer.start()
        if self._queue.qsize() >= self.max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("forecast log %s is %d requests behind: dropped %d request(s) so far",
                            self.display, self.max_pending, self.dropped)
            return False
        self._queue.put_nowait((request_id, logged, tuple(float(k) for k in strikes)))
        return True

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
        self.engine.dispose()

    def _write_loop(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < 1000:   # everything queued meanwhile goes into the same transaction
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            requests = [i for i in items if isinstance(i, tuple)]
            if requests:
                try:
                    self._write(requests)
                    self.written += len(requests)
                except Exception:       # a database error (or a bad row): counted, and the writer goes on
                    self.failed += len(requests)
                    log.exception("could not write %d request(s)' forecasts to %s", len(requests), self.display)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
            if any(item is None for item in items):
                return

    def _write(self, requests: list[tuple[str, list[Logged], tuple[float, ...]]]) -> None:
        plain: list[dict[str, Any]] = []
        chains: list[tuple[list[dict[str, Any]], list[np.ndarray], tuple[float, ...]]] = []
        served_at = _now()
        for request_id, logged, strikes in requests:
            for role, result, served in logged:
                rows, probs = [], []
                for h in result.horizons:
                    key = f"{h}d"
                    loc, scale, df = result.distribution(key)
                    lo, hi = result.interval(key, 0.8)
                    rows.append({"request_id": request_id, "served_at": served_at, "symbol": result.symbol,
                                 "as_of": result.as_of, "current_price": result.current_price, "horizon": h,
                                 "model_version": result.model_version,
                                 "source": result.source if served else "shadow", "role": role, "loc": loc,
                                 "scale": scale, "df": df if math.isfinite(df) else _GAUSSIAN_DF,
                                 "median": result.prices[key], "lo80": lo, "hi80": hi})
                    if strikes:
                        probs.append(result.prob_above_many(strikes, key))
                if strikes:
                    chains.append((rows, probs, strikes))
                else:
                    plain += rows
        with self.engine.begin() as conn:
            if plain:
                conn.execute(self.forecasts.insert(), plain)
            for rows, probs, strikes in chains:
                self._insert_with_probabilities(conn, rows, probs, strikes)

    def _insert_with_probabilities(self, conn: Any, rows: list[dict[str, Any]], probs: Sequence[np.ndarray],
                                   strikes: Sequence[float], briers: Sequence[np.ndarray] | None = None) -> None:
        """Forecast rows and, for each, its P(S_T > K) per strike (and Brier scores, when known)."""
        ids = conn.execute(self.forecasts.insert().returning(self.forecasts.c.id, sort_by_parameter_order=True),
                           rows).scalars().all()
        conn.execute(self.probabilities.insert(), [
            {"forecast_id": fid, "strike": float(k), "p_above": float(p),
             "brier": None if briers is None else float(briers[i][j])}
            for i, (fid, ps) in enumerate(zip(ids, probs, strict=True))
            for j, (k, p) in enumerate(zip(strikes, ps, strict=True))])

    # ---- scoring ------------------------------------------------------------------------------
    def score(self, load_history: Callable[[str], pd.DataFrame | pd.Series]) -> int:
        """Score every unscored forecast whose outcome is in `load_history(symbol)`; returns how many were scored.

        `load_history` returns a later history with a DatetimeIndex (a close column or a Series). The
        forecast made at `as_of` (its last close) for horizon h is scored against the close h rows after
        `as_of` in that history; forecasts without `as_of`, or whose `as_of` is not a row of it, wait.
        Each champion forecast scored gets its shadow baselines' forecasts, scored too (not counted).
        """
        sa, f, p = self._sa, self.forecasts, self.probabilities
        self.flush()
        scored = 0
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(f.c.id, f.c.request_id, f.c.symbol, f.c.as_of, f.c.current_price,
                                          f.c.horizon, f.c.loc, f.c.scale, f.c.df, f.c.lo80, f.c.hi80, f.c.role)
                                .where(f.c.scored_at.is_(None), f.c.as_of.is_not(None))).all()
            by_symbol: dict[str, list[Any]] = {}
            for row in rows:
                by_symbol.setdefault(row.symbol, []).append(row)
            for symbol, todo in by_symbol.items():
                try:
                    history = load_history(symbol)
                except (ValueError, FileNotFoundError) as exc:
                    log.warning("%s: no later prices to score against (%s)", symbol, exc)
                    continue
                closes = history["close"] if isinstance(history, pd.DataFrame) else history
                index = pd.DatetimeIndex(closes.index)
                values = closes.to_numpy(dtype=np.float64)
                positions = dict(zip(sorted({r.as_of for r in todo}),
                                     index.get_indexer(pd.to_datetime(sorted({r.as_of for r in todo}))), strict=True))
                updates, outcomes, champions = [], [], []
                for row in todo:
                    pos = int(positions[row.as_of])
                    if pos < 0 or pos + row.horizon >= len(values):
                        continue
                    realised = float(values[pos + row.horizon])
                    updates.append({"fid": row.id, "scored_at": _now(), **_scores(
                        realised, row.current_price, row.loc, row.scale, row.df, row.lo80, row.hi80)})
                    outcomes.append({"fid": row.id, "r": realised})
                    if row.role == "champion":
                        champions.append((row, pos, realised))
                if not updates:
                    continue
                conn.execute(f.update().where(f.c.id == sa.bindparam("fid")).values(
                    realised=sa.bindparam("realised"), crps=sa.bindparam("crps"), covered=sa.bindparam("covered"),
                    se=sa.bindparam("se"), se_nochange=sa.bindparam("se_nochange"),
                    scored_at=sa.bindparam("scored_at")), updates)
                # Brier = (p - outcome)^2 with outcome = 1 when the strike is below the realised price
                hit = p.c.strike < sa.bindparam("r")
                conn.execute(p.update().where(p.c.forecast_id == sa.bindparam("fid")).values(
                    brier=sa.case((hit, (1.0 - p.c.p_above) * (1.0 - p.c.p_above)),
                                  else_=p.c.p_above * p.c.p_above)), outcomes)
                self._score_baselines(conn, symbol, values, champions)
                scored += len(updates)
        return scored

    def _score_baselines(self, conn: Any, symbol: str, values: np.ndarray, champions: list[tuple[Any, int, float]]
                         ) -> None:
        """The shadow baselines' forecasts of the champion forecasts just scored, inserted already scored."""
        if not champions:
            return
        sa, p = self._sa, self.probabilities
        strikes: dict[int, list[float]] = {}
        ids = [row.id for row, _, _ in champions]
        for k in range(0, len(ids), 500):
            for fid, strike in conn.execute(sa.select(p.c.forecast_id, p.c.strike)
                                            .where(p.c.forecast_id.in_(ids[k:k + 500]))):
                strikes.setdefault(fid, []).append(float(strike))
        fitted: dict[int, dict[str, Any]] = {}
        plain, chains = [], []
        now = _now()
        for row, pos, realised in champions:
            if pos not in fitted:       # one fit per symbol and day, causal: the closes up to as_of
                history = values[max(0, pos + 1 - _BASELINE_DAYS):pos + 1]
                fitted[pos] = {}
                for name, cls in SHADOW_BASELINES.items():
                    try:
                        fitted[pos][name] = (cls().fit(history), history)
                    except ValueError as exc:     # e.g. too short a history: no such baseline for that day
                        log.debug("shadow %s skipped for %s: %s", name, symbol, exc)
            for name, (model, history) in fitted[pos].items():
                fc = model.predict(history, [row.horizon])
                mu, sd = float(np.ravel(fc.mean)[0]), float(np.ravel(fc.scale)[0])
                df = math.inf if fc.df is None else float(np.ravel(fc.df)[0])
                price = row.current_price
                z = _Z80 if math.isinf(df) else float(stats.t.ppf(0.9, df))
                base = {"request_id": row.request_id, "served_at": now, "symbol": symbol, "as_of": row.as_of,
                        "current_price": price, "horizon": row.horizon, "model_version": f"baseline:{name}",
                        "source": "shadow", "role": "baseline", "loc": mu, "scale": sd,
                        "df": df if math.isfinite(df) else _GAUSSIAN_DF, "median": price * math.exp(mu),
                        "lo80": price * math.exp(mu - z * sd), "hi80": price * math.exp(mu + z * sd),
                        "scored_at": now}
                base.update(_scores(realised, price, mu, sd, base["df"], base["lo80"], base["hi80"]))
                ks = strikes.get(row.id)
                if ks:
                    zk = (np.log(np.asarray(ks) / price) - mu) / sd
                    above = special.ndtr(-zk) if math.isinf(df) else stats.t.sf(zk, df)
                    outcome = (np.asarray(ks) < realised).astype(np.float64)
                    chains.append((base, above, ks, (above - outcome) ** 2))
                else:
                    plain.append(base)
        if plain:
            conn.execute(self.forecasts.insert(), plain)
        for base, above, ks, brier in chains:
            self._insert_with_probabilities(conn, [base], [above], ks, [brier])

    # ---- reading ------------------------------------------------------------------------------
    def report(self) -> list[dict[str, Any]]:
        """Counts and mean scores per symbol, model version, role and horizon (REPORT_COLUMNS).

        `forecasts` counts every logged forecast, `served` those a client received (not shadows).
        """
        sa = self._sa
        self.flush()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(
                f"SELECT f.symbol, COALESCE(f.model_version, f.source), {_ROLE}, f.horizon, COUNT(*), "
                "SUM(CASE WHEN f.source <> 'shadow' THEN 1 ELSE 0 END), COUNT(f.scored_at), "
                "AVG(f.crps), AVG(f.covered), AVG(p.brier), SUM(COALESCE(p.n, 0)), AVG(f.se), AVG(f.se_nochange) "
                "FROM forecasts f LEFT JOIN (SELECT forecast_id, AVG(brier) AS brier, COUNT(*) AS n "
                "FROM probabilities WHERE brier IS NOT NULL GROUP BY forecast_id) p ON p.forecast_id = f.id "
                "GROUP BY 1, 2, 3, 4 ORDER BY 1, 3 DESC, 2, 4")).all()
        out = []
        for row in rows:
            d = dict(zip(REPORT_COLUMNS, row, strict=True))
            for k in ("forecasts", "served", "scored", "n_probabilities", "horizon"):
                d[k] = int(d[k] or 0)
            for k in ("crps", "coverage80", "brier", "mse", "mse_nochange"):
                d[k] = None if d[k] is None else float(d[k])
            out.append(d)
        return out

    def _rolling(self, arm: str, where: str, window: int) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(self._sa.text(
                f"SELECT arm, horizon, AVG(crps), AVG(covered), COUNT(*) FROM (SELECT {arm} AS arm, f.horizon, "
                f"f.crps, f.covered, ROW_NUMBER() OVER (PARTITION BY {arm}, f.horizon ORDER BY f.id DESC) AS k "
                f"FROM forecasts f WHERE f.scored_at IS NOT NULL {where}) t WHERE k <= :window "
                "GROUP BY arm, horizon ORDER BY arm, horizon"), {"window": window}).all()

    def rolling(self, window: int = 250) -> dict[int, dict[str, float]]:
        """Per horizon: the CRPS and 80% coverage over its latest `window` scored served forecasts, and their count."""
        rows = self._rolling("'served'", "AND f.source <> 'shadow'", window)
        return {int(h): {"crps": float(c), "coverage80": float(v), "n": int(n)} for _, h, c, v, n in rows}

    def rolling_by_arm(self, window: int = 250) -> dict[tuple[str, int], dict[str, float]]:
        """Per arm ("champion", "challenger", "baseline:<name>") and horizon, served or in the shadow: the CRPS
        and 80% coverage over its latest `window` scored forecasts, and their count (/metrics compares them)."""
        rows = self._rolling(f"CASE WHEN {_ROLE} = 'baseline' THEN f.model_version ELSE {_ROLE} END", "", window)
        return {(str(a), int(h)): {"crps": float(c), "coverage80": float(v), "n": int(n)} for a, h, c, v, n in rows}


def _scores(realised: float, price: float, loc: float, scale: float, df: float, lo: float, hi: float
            ) -> dict[str, float | int]:
    """CRPS, 80% coverage and squared errors of one forecast against its realised price."""
    r = math.log(realised / price)
    nu = math.inf if df >= _GAUSSIAN_DF else df
    return {"realised": realised, "crps": float(crps_student_t(np.array([r]), nu, loc, scale)[0]),
            "covered": int(lo <= realised <= hi), "se": (r - loc) ** 2, "se_nochange": r ** 2}
