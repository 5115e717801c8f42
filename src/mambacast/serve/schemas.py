"""Request and response bodies of the forecast service (pydantic models: they are the OpenAPI schema at /docs).

Every constraint a request can break lives here, so FastAPI answers a bad request with 422 and the
field's location and reason before any forecasting starts. Prices must be positive and finite (JSON
`NaN`/`Infinity`, which Python's parser accepts, are refused too).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..predict import DEFAULT_QUANTILES

__all__ = ["ForecastRequest", "ForecastResponse", "ProbabilitiesRequest", "ProbabilitiesResponse",
           "HorizonProbabilities", "ModelInfo", "ModelsResponse", "ChallengerInfo", "ErrorResponse", "SYMBOL_PATTERN"]

SYMBOL_PATTERN = r"^[A-Za-z0-9^._=-]{1,32}$"     # the model store's file-name rule
MAX_HISTORY = 20_000      # closes per request (80 years of trading days)
MAX_STRIKES = 1_000

Price = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Level = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
Horizon = Annotated[int, Field(ge=1, le=365)]


class _Strict(BaseModel):
    # Unknown fields are refused: a misspelt "horizon" must not silently give every horizon.
    model_config = ConfigDict(extra="forbid")


class _History(_Strict):
    symbol: str = Field(pattern=SYMBOL_PATTERN, description="ticker, e.g. AAPL", examples=["AAPL"])
    prices: list[Price] | None = Field(
        None, min_length=3, max_length=MAX_HISTORY,
        description="daily closes, oldest first, the last one the forecast's origin; omitted: the service's "
                    "configured price source")
    as_of: date | None = Field(None, description="date of the last close in `prices` (lets the monitor score "
                                                 "the forecast later); omitted with `prices`: unknown")
    current_price: Price | None = Field(None, description="price the forecast starts from; default: the last close")
    horizons: list[Horizon] | None = Field(None, min_length=1, max_length=16,
                                           description="trading days ahead, a subset of the model's (1, 5, 10, 30); "
                                                       "default: all")

    @field_validator("symbol")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()

    @field_validator("horizons")
    @classmethod
    def _distinct(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("horizons must not repeat")
        return v


class ForecastRequest(_History):
    quantiles: list[Level] = Field(list(DEFAULT_QUANTILES), min_length=1, max_length=99,
                                   description="price quantile levels, each strictly between 0 and 1")

    @field_validator("quantiles")
    @classmethod
    def _distinct_levels(cls, v: list[float]) -> list[float]:
        if len(set(v)) != len(v):
            raise ValueError("quantiles must not repeat")
        return sorted(v)


class ProbabilitiesRequest(_History):
    strikes: list[Price] = Field(min_length=1, max_length=MAX_STRIKES, description="option strikes (prices)")


class _Served(BaseModel):
    symbol: str
    as_of: str | None = Field(description="date of the forecast's last close, when known")
    current_price: float
    source: Literal["mamba", "momentum"] = Field(description="mamba: a stored model; momentum: the fallback rule")
    reason: str | None = Field(description="why the momentum fallback answered (null for mamba)")
    model_version: str | None = Field(description="<training date>/<weights SHA-256 prefix> of the model that answered")
    role: Literal["champion", "challenger"] = Field(
        "champion", description="which model served: the store's current one (champion) or the configured "
                                "challenger (traffic split)")
    request_id: str = Field(description="the id this forecast is logged under for live accuracy monitoring")


class ForecastResponse(_Served):
    prices: dict[str, float] = Field(description="the guide's answer: median price per horizon, keys '1d', '5d', ...")
    log_returns: dict[str, float]
    quantiles: dict[str, dict[str, float]] = Field(description="price quantiles per horizon, keyed by level")


class HorizonProbabilities(BaseModel):
    above: list[float] = Field(description="P(S_T > K) per strike, in the request's order")
    below: list[float] = Field(description="P(S_T < K) per strike (1 - above: the law is continuous)")


class ProbabilitiesResponse(_Served):
    strikes: list[float]
    horizons: dict[str, HorizonProbabilities]


class ModelInfo(BaseModel):
    symbol: str
    version: str | None = Field(description="loaded version; null when the model could not be loaded")
    training_date: str | None = None
    data_hash: str | None = None
    best_val_crps: float | None = None
    error: str | None = Field(None, description="why the model is unusable (the service then answers with momentum)")


class ChallengerInfo(BaseModel):
    symbols: list[str] | None = Field(description="symbols it challenges; null: every symbol (a global model)")
    global_model: bool = Field(description="the store's current global model is the challenger")
    versions: dict[str, str] = Field(description="stored version per symbol (SYMBOL=VERSION challengers)")
    traffic: float = Field(description="share of requests the challenger serves (the rest: shadow only)")
    seed: int = Field(description="seed of the per-request-id traffic split")
    models: list[ModelInfo] = Field(description="the challenger's loaded models")


class ModelsResponse(BaseModel):
    store: str
    models: list[ModelInfo]
    challenger: ChallengerInfo | None = Field(None, description="the challenger forecasting beside the champion")


class ErrorResponse(BaseModel):
    detail: list[dict[str, object]] | str
