"""The FastAPI application: forecasts, options-chain probabilities, models, health and Prometheus metrics.

`create_app(store_dir, ...)` builds an app over one model store; `mambacast serve` runs it with uvicorn.
Routes (OpenAPI at /docs):

    POST /v1/forecast        median price, quantiles, source and model version per horizon (the guide's answer)
    POST /v1/probabilities   P(S_T > K) and P(S_T < K) for many strikes x horizons, from one forecast
    GET  /v1/models          the stored models and the version each serves
    GET  /healthz            the process answers
    GET  /readyz             models are loaded (503 until then)
    GET  /metrics            Prometheus text: requests and latency per route, fallbacks, versions, live accuracy

Inference runs in the predictor's worker threads through the `Batcher`; the event loop only parses and
answers. A bad request is answered 422 (404 for a symbol the price source lacks) with FastAPI's
`{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`; an unexpected error 500 with a one-line message,
never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import pydantic_core
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..monitor import ForecastLog
from ..predict import PredictionResult
from ..store import ModelStore
from .challenger import CHALLENGER, CHAMPION, ChallengerConfig, route
from .metrics import Counter, CounterValue, Gauge, Histogram, Registry
from .runtime import Batcher, HistoryCache, ModelHolder
from .schemas import (
    ChallengerInfo,
    ForecastRequest,
    ForecastResponse,
    HorizonProbabilities,
    ModelInfo,
    ModelsResponse,
    ProbabilitiesRequest,
    ProbabilitiesResponse,
)

__all__ = ["create_app", "ServiceState"]

log = logging.getLogger(__name__)

ROUTES = ("/v1/forecast", "/v1/probabilities", "/v1/models", "/healthz", "/readyz", "/metrics")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")    # a client's X-Request-ID, kept as the log's key


class RequestError(Exception):
    """A request that passed the schema but cannot be answered as asked (e.g. a horizon the model lacks)."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(message)
        self.field, self.message, self.status = field, message, status


class _JSONRequest(Request):
    """A request whose JSON body is parsed by pydantic-core's parser (Rust): 0.04 ms for the 1,000 closes of a
    sent history instead of the standard library's 0.25 ms. The values are those `json.loads` gives; a body it
    refuses goes to `json.loads` itself, so invalid JSON gets FastAPI's 422 `json_invalid` answer as before."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body)
            except ValueError:   # invalid JSON, or valid only to Python's parser (BOM, UTF-16, lone surrogates)
                self._json = json.loads(body)
        return self._json


class _JSONRoute(APIRoute):
    """FastAPI's route with `_JSONRequest` bodies (FastAPI's documented way to customise request parsing)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parse_fast(request: Request) -> Response:
            return await handler(_JSONRequest(request.scope, request.receive))

        return parse_fast


def _fallback_kind(reason: str) -> str:
    """A bounded label for /metrics from the predictor's free-text fallback reason."""
    if reason.startswith("no usable model"):
        return "no_model"
    if reason.startswith("history has"):
        return "short_history"
    return "other"


class ServiceState:
    """Everything the routes share: models, batcher, price histories, the forecast log and the metrics."""

    def __init__(self, store_dir: str | Path, *, source: str, data: str | None, model: str, max_workers: int | None,
                 log_path: str | Path | None, reload_interval_s: float, max_batch: int,
                 challenger: ChallengerConfig | None = None):
        self.holder = ModelHolder(store_dir, model=model, max_workers=max_workers, challenger=challenger)
        self.batcher = Batcher(self.holder, max_batch=max_batch, consumers=max(2, max_workers or 2))
        self.histories = HistoryCache(self.holder.store, source=source, data=data)
        self.forecast_log = ForecastLog(log_path) if log_path is not None else None
        self.reload_interval_s = reload_interval_s
        self.registry = Registry()
        self.requests = self.registry.add(Counter("mambacast_requests_total", "HTTP requests by route and status",
                                                  ("route", "method", "status")))
        self.latency = self.registry.add(Histogram("mambacast_request_duration_seconds",
                                                   "request latency by route", ("route",)))
        self.forecasts = self.registry.add(Counter("mambacast_forecasts_total", "forecasts served by source",
                                                   ("source",)))
        self.fallbacks = self.registry.add(Counter("mambacast_fallbacks_total", "momentum fallbacks by reason",
                                                   ("reason",)))
        self.served = self.registry.add(Counter("mambacast_served_total", "forecasts served by role (champion, "
                                                "challenger)", ("role",)))
        self.shadowed = self.registry.add(Counter("mambacast_challenger_shadow_total", "challenger forecasts "
                                                  "computed and logged but not served", ()))
        self.versions = self.registry.add(Gauge("mambacast_model_loaded", "1 for each loaded model version",
                                                ("symbol", "version")))
        self.reloads = self.registry.add(Gauge("mambacast_model_reloads", "times the served models were (re)loaded"))
        self.log_written = self.registry.add(CounterValue(
            "mambacast_log_written_total", "requests whose forecasts the forecast log has written"))
        self.log_pending = self.registry.add(Gauge("mambacast_log_pending", "requests queued for the forecast log"))
        self.log_dropped = self.registry.add(CounterValue(
            "mambacast_log_dropped_total", "requests not logged: the log's queue was full (the database fell far "
                                           "behind)"))
        self.log_failed = self.registry.add(CounterValue(
            "mambacast_log_failed_total", "requests whose forecasts the database refused (see the service's log)"))
        self.live_crps = self.registry.add(Gauge("mambacast_live_crps", "mean CRPS (log-return) of the latest "
                                                 "scored forecasts, by horizon", ("horizon",)))
        self.live_coverage = self.registry.add(Gauge("mambacast_live_coverage80", "share of the latest scored "
                                                     "forecasts inside their 80% interval, by horizon", ("horizon",)))
        self.live_scored = self.registry.add(Gauge("mambacast_live_scored", "scored forecasts in the rolling "
                                                   "window, by horizon", ("horizon",)))
        self.arm_crps = self.registry.add(Gauge("mambacast_arm_crps", "mean CRPS (log-return) of the latest scored "
                                                "forecasts of each arm (champion, challenger, baselines; served or "
                                                "shadow), by horizon", ("arm", "horizon")))
        self.arm_coverage = self.registry.add(Gauge("mambacast_arm_coverage80", "80% interval coverage of the "
                                                    "latest scored forecasts of each arm, by horizon",
                                                    ("arm", "horizon")))
        self.arm_scored = self.registry.add(Gauge("mambacast_arm_scored", "scored forecasts in each arm's rolling "
                                                  "window, by horizon", ("arm", "horizon")))

    def refresh_gauges(self) -> None:
        """Model versions and live accuracy for /metrics (blocking: reads the forecast log)."""
        self.versions.replace({(s, i.version): 1.0 for s, i in self.holder.models.items() if i.version})
        self.reloads.set(value=self.holder.reloads)
        if self.forecast_log is not None:
            flog = self.forecast_log
            self.log_written.set(value=flog.written)
            self.log_pending.set(value=flog.pending)
            self.log_dropped.set(value=flog.dropped)
            self.log_failed.set(value=flog.failed)
            rolling = self.forecast_log.rolling()
            self.live_crps.replace({(str(h),): v["crps"] for h, v in rolling.items()})
            self.live_coverage.replace({(str(h),): v["coverage80"] for h, v in rolling.items()})
            self.live_scored.replace({(str(h),): v["n"] for h, v in rolling.items()})
            arms = self.forecast_log.rolling_by_arm()
            self.arm_crps.replace({(a, str(h)): v["crps"] for (a, h), v in arms.items()})
            self.arm_coverage.replace({(a, str(h)): v["coverage80"] for (a, h), v in arms.items()})
            self.arm_scored.replace({(a, str(h)): v["n"] for (a, h), v in arms.items()})


class _MetricsMiddleware:
    """Counts every request and times it per route (a plain ASGI middleware: no per-request task)."""

    def __init__(self, app: ASGIApp, state: ServiceState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"   # bounded label set
            self.state.requests.inc(route, scope["method"], str(status[0]))
            self.state.latency.observe(time.perf_counter() - start, route)


async def get_state(request: Request) -> ServiceState:
    """Dependency: the app's shared state (async: FastAPI runs a plain-function dependency in its thread pool,
    a thread hand-off per request)."""
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]


async def _history(state: ServiceState, req: ForecastRequest | ProbabilitiesRequest) -> tuple[Any, float, Hashable]:
    """The request's price history (its own closes, else the configured source's), current price and content key."""
    if req.prices is not None:
        history: Any = np.asarray(req.prices, dtype=np.float64)
        last = float(history[-1])
        key: Hashable = ("sent", hashlib.blake2b(history.tobytes(), digest_size=16).digest(), req.as_of)
        if req.as_of is not None:       # a dated last close lets the monitor score the forecast later; only
            #                             that date is read, so the earlier rows get consecutive calendar days
            history = pd.Series(history, index=pd.date_range(end=req.as_of, periods=len(history)), name="close")
    else:
        try:   # a thread only to read the source: a cache hit is a dict look-up
            history, loaded_at = state.histories.cached(req.symbol) or \
                await asyncio.to_thread(state.histories.get, req.symbol)
        except (ValueError, FileNotFoundError) as exc:
            raise RequestError("symbol", f"no prices for {req.symbol} in the service's price source ({exc}); send "
                                         "them in `prices`", status=404) from None
        last = float(history["close"].iloc[-1])
        key = ("source", loaded_at)
    return history, req.current_price if req.current_price is not None else last, key


def _horizon_keys(result: PredictionResult, wanted: list[int] | None) -> list[str]:
    if wanted is None:
        return [f"{h}d" for h in result.horizons]
    missing = [h for h in wanted if h not in result.horizons]
    if missing:
        raise RequestError("horizons", f"horizon(s) {', '.join(map(str, missing))} not forecast; the model forecasts "
                                       f"{', '.join(map(str, result.horizons))} trading days ahead")
    return [f"{h}d" for h in wanted]


def _request_id(request: Request) -> str:
    """The client's `X-Request-ID` when it is a usable key (it then also fixes the traffic split), else a new one."""
    given = request.headers.get("x-request-id")
    return given if given is not None and _REQUEST_ID.match(given) else uuid.uuid4().hex


class _Answer:
    """One request's answer: the served forecast, its role, and every model forecast to log."""

    def __init__(self, result: PredictionResult, role: str, logged: list[tuple[str, PredictionResult, bool]],
                 request_id: str):
        self.result, self.role, self.logged, self.request_id = result, role, logged, request_id


async def _serve(state: ServiceState, req: ForecastRequest | ProbabilitiesRequest, quantiles: list[float],
                 request_id: str) -> _Answer:
    """The forecast for a request: the champion's, or (traffic split) the challenger's; both when one is set."""
    history, price, key = await _history(state, req)
    challenged = state.holder.challenges(req.symbol)
    arms = (CHAMPION, CHALLENGER) if challenged else (CHAMPION,)
    outcomes = await asyncio.gather(*(state.batcher.forecast(req.symbol, history, price, quantiles, history_key=key,
                                                             arm=arm) for arm in arms), return_exceptions=True)
    champion = outcomes[0]
    if isinstance(champion, ValueError):     # the predictor's input checks, e.g. a model that needs volume
        raise RequestError("prices", str(champion)) from None
    if isinstance(champion, BaseException):
        raise champion
    logged = [(CHAMPION, champion, True)]
    served, role = champion, CHAMPION
    if challenged:
        challenger = outcomes[1]
        if isinstance(challenger, BaseException):
            log.warning("the challenger failed on a %s request: %s", req.symbol, challenger)
        elif challenger.source == "mamba":   # a challenger never serves, nor is scored as, the momentum fallback
            cfg = state.holder.challenger
            if cfg is not None and route(request_id, cfg.traffic, cfg.seed) == CHALLENGER:
                served, role = challenger, CHALLENGER
                logged = [(CHAMPION, champion, False)]
            else:
                state.shadowed.inc()
            logged.append((CHALLENGER, challenger, role == CHALLENGER))
    state.forecasts.inc(served.source)
    state.served.inc(role)
    if served.reason:
        state.fallbacks.inc(_fallback_kind(served.reason))
    return _Answer(served, role, logged, request_id)


def _served_fields(served: _Answer) -> dict[str, Any]:
    result = served.result
    return {"symbol": result.symbol, "as_of": result.as_of, "current_price": result.current_price,
            "source": result.source, "reason": result.reason, "model_version": result.model_version,
            "role": served.role, "request_id": served.request_id}


def _add_routes(app: FastAPI) -> None:
    @app.post("/v1/forecast", response_model=ForecastResponse, tags=["forecasts"],
              summary="Price forecast and quantiles per horizon")
    async def forecast(req: ForecastRequest, state: State, request: Request) -> ForecastResponse:
        served = await _serve(state, req, req.quantiles, _request_id(request))
        result = served.result
        keys = _horizon_keys(result, req.horizons)
        if state.forecast_log is not None:
            state.forecast_log.record(served.request_id, served.logged)
        return ForecastResponse(
            **_served_fields(served), prices={k: result.prices[k] for k in keys},
            log_returns={k: result.log_returns[k] for k in keys},
            quantiles={k: {f"{q:g}": v for q, v in result.quantiles[k].items()} for k in keys})

    @app.post("/v1/probabilities", response_model=ProbabilitiesResponse, tags=["forecasts"],
              summary="P(S_T > K) and P(S_T < K) for an options chain (strikes x horizons), one forward pass")
    async def probabilities(req: ProbabilitiesRequest, state: State, request: Request) -> ProbabilitiesResponse:
        served = await _serve(state, req, [0.5], _request_id(request))
        result = served.result
        keys = _horizon_keys(result, req.horizons)
        if state.forecast_log is not None:
            state.forecast_log.record(served.request_id, served.logged, req.strikes)
        table = {}
        for k in keys:
            above = result.prob_above_many(req.strikes, k)
            table[k] = HorizonProbabilities(above=above.tolist(), below=(1.0 - above).tolist())
        return ProbabilitiesResponse(**_served_fields(served), strikes=req.strikes, horizons=table)

    @app.get("/v1/models", response_model=ModelsResponse, tags=["models"], summary="Stored models and versions")
    async def models(state: State) -> ModelsResponse:
        holder = state.holder
        challenger = None
        if holder.challenger is not None:
            cfg = holder.challenger
            challenger = ChallengerInfo(
                symbols=None if cfg.every_symbol else sorted(cfg.versions), global_model=cfg.global_model,
                versions=dict(cfg.versions), traffic=cfg.traffic, seed=cfg.seed,
                models=[ModelInfo(**vars(i)) for i in holder.challenger_models.values()])
        return ModelsResponse(store=str(holder.store.root),
                              models=[ModelInfo(**vars(i)) for i in holder.models.values()], challenger=challenger)

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["operations"], summary="Readiness: models are loaded")
    async def readyz(state: State) -> JSONResponse:
        holder = state.holder
        loaded = sorted(s for s, i in holder.models.items() if i.version)
        if not holder.ready:
            return JSONResponse({"status": "not ready", "models": loaded,
                                 "reason": "no usable model loaded from " + str(holder.store.root)}, status_code=503)
        return JSONResponse({"status": "ready", "models": loaded})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (text exposition format)",
             response_class=PlainTextResponse)
    async def metrics(state: State) -> PlainTextResponse:
        await asyncio.to_thread(state.refresh_gauges)
        return PlainTextResponse(state.registry.render(), media_type="text/plain; version=0.0.4")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": ["body", exc.field], "msg": exc.message, "type": "value_error"}]},
                            status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape, without echoing the whole input (a 20,000-close history) back in every error
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error while serving a request", exc_info=exc)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


def create_app(store_dir: str | Path = "models/mamba", *, source: str = "sample", data: str | None = None,
               model: str = "auto", max_workers: int | None = 1, log_path: str | Path | None = None,
               reload_interval_s: float = 1.0, max_batch: int = 64,
               challenger: ChallengerConfig | None = None) -> FastAPI:
    """The forecast service over the model store `store_dir`.

    `source`/`data`: where prices come from when a request sends none (as `mambacast predict`); `model`:
    auto|symbol|global (as `MambaPredictor`); `max_workers`: inference threads (default 1: a forecast's
    Python work holds the GIL, and two threads contending for it served a third fewer requests than one;
    None: the CPU count; run more processes, `--workers`, for more cores); `log_path`: the SQLite forecast
    log (None: no logging); `reload_interval_s`: how often the store is checked for a promoted, rolled back
    or retrained model (0: never); `max_batch`: requests per batch; `challenger`: a model forecasting beside
    the champion, and its traffic share (`serve.challenger`; checked here: ValueError with one line).
    """
    if challenger is not None:
        challenger.check(ModelStore(store_dir), model)
    state = ServiceState(store_dir, source=source, data=data, model=model, max_workers=max_workers,
                         log_path=log_path, reload_interval_s=reload_interval_s, max_batch=max_batch,
                         challenger=challenger)

    async def watch() -> None:
        while True:
            await asyncio.sleep(state.reload_interval_s)
            try:
                await asyncio.to_thread(state.holder.reload)
            except Exception:       # keep watching: the current models still serve
                log.exception("reloading the model store failed")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(state.holder.reload, True)
        # Everything alive now (imported modules, the loaded models: about 450,000 objects) stays alive: take it out
        # of the cyclic collector's generations, whose full passes over it stopped every request for 200 ms every few
        # seconds under load (the 32-client p99). Predictors replaced by a reload are freed by reference counting
        # (they hold no cycles), frozen or not.
        gc.freeze()
        state.batcher.start()
        watcher = asyncio.create_task(watch()) if reload_interval_s > 0 else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await state.batcher.stop()
            state.holder.close()
            if state.forecast_log is not None:
                state.forecast_log.close()

    app = FastAPI(title="mambacast forecast service", version=__version__, lifespan=lifespan,
                  description="Mamba state-space forecasts of daily stock prices: the Student-t per horizon pooled "
                              "with a per-stock GARCH(1,1)-t and HAR-t, with a momentum fallback.")
    app.state.service = state
    app.router.route_class = _JSONRoute
    _add_routes(app)
    _add_error_handlers(app)
    app.add_middleware(_MetricsMiddleware, state=state)
    return app
