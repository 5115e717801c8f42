"""Model and training configuration, with the guide's presets.

`MambaConfig` holds what defines the network (and so what must match a weights file);
`TrainConfig` holds how it is fitted. Both validate on construction, round-trip through
JSON, and refuse unknown keys when loaded, so a typo in a saved config is an error, not a
silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["MambaConfig", "TrainConfig", "PRESETS", "preset", "load_preset", "save_preset"]

_C = TypeVar("_C", bound="_JsonConfig")


def _require(cond: bool, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ValueError(f"{name}={value!r} is invalid: {allowed}")


def _positive_int(name: str, value: Any) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    _require(ok, name, value, "must be a positive integer")


def _positive_float(name: str, value: Any) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    _require(ok, name, value, "must be a positive finite number")


class _JsonConfig:
    """Dict/JSON round-trip shared by the config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__} must be loaded from a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} key(s) {unknown}; allowed keys are {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls: type[_C], text: str) -> _C:
        return cls.from_dict(json.loads(text))


@dataclass
class MambaConfig(_JsonConfig):
    """Architecture of a multi-horizon Mamba forecaster (the guide's `MambaConfig`).

    `d_inner = expand * d_model`; `dt_rank="auto"` resolves to `ceil(d_model / 16)` as in
    Gu & Dao (2023). `dt_min`/`dt_max` bound the initial step size: `softplus(dt_proj.bias)`
    is drawn log-uniformly in `[dt_min, dt_max]`.
    """

    d_model: int = 64
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    num_layers: int = 4
    prediction_horizons: list[int] = field(default_factory=lambda: [1, 5, 10, 30])
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("d_model", "d_state", "d_conv", "expand", "num_layers"):
            _positive_int(name, getattr(self, name))
        if self.dt_rank != "auto":
            _positive_int("dt_rank", self.dt_rank)
        h = self.prediction_horizons
        _require(isinstance(h, (list, tuple)) and len(h) > 0, "prediction_horizons", h,
                 "must be a non-empty list of positive integers, e.g. [1, 5, 10, 30]")
        for x in h:
            _positive_int("prediction_horizons", x)
        _require(len(set(h)) == len(h), "prediction_horizons", h, "must not contain duplicates")
        _require(list(h) == sorted(h), "prediction_horizons", h, "must be sorted in increasing order")
        self.prediction_horizons = list(h)
        for name in ("dt_min", "dt_max", "dt_init_floor", "norm_eps"):
            _positive_float(name, getattr(self, name))
        _require(self.dt_min < self.dt_max, "dt_min", self.dt_min, f"must be below dt_max={self.dt_max}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank_value(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def max_horizon(self) -> int:
        return self.prediction_horizons[-1]

    # Presets: the guide's "Hyperparameter Optimization" table (model columns).
    @classmethod
    def default(cls, **overrides: Any) -> MambaConfig:
        return cls(**overrides)

    @classmethod
    def small(cls, **overrides: Any) -> MambaConfig:
        return cls(**{"d_model": 32, "d_state": 8, "num_layers": 2, **overrides})

    @classmethod
    def large(cls, **overrides: Any) -> MambaConfig:
        return cls(**{"d_model": 128, "d_state": 32, "num_layers": 6, **overrides})

    @classmethod
    def high_variance(cls, **overrides: Any) -> MambaConfig:
        return cls(**{"d_model": 96, "d_state": 24, "num_layers": 5, **overrides})


@dataclass
class TrainConfig(_JsonConfig):
    """How a model is fitted: the guide's Adam loop and its Keras-style callbacks, on the Student-t
    likelihood (`loss="nll"`) or the guide's MSE (`loss="mse"`)."""

    epochs: int = 50
    batch_size: int = 32
    learning_rate: float = 0.001
    sequence_length: int = 60
    validation_split: float = 0.2
    patience: int = 5
    min_delta: float = 1e-4
    lr_factor: float = 0.5
    lr_patience: int = 3
    min_lr: float = 1e-6
    clipnorm: float = 1.0
    weight_decay: float = 0.0
    augmentation_rate: float = 0.0
    seed: int = 42
    # "nll": the Student-t likelihood of the whole distribution (default); "mse": the guide's objective.
    loss: str = "nll"
    # Weights of the stock's own GARCH(1,1)-t and HAR-t in the served distribution (`mambacast.blend`); the
    # network gets 1 minus their sum (both 0: the network alone).
    garch_weight: float = 1.0 / 3.0
    har_weight: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "sequence_length", "patience", "lr_patience"):
            _positive_int(name, getattr(self, name))
        for name in ("learning_rate", "clipnorm", "min_lr"):
            _positive_float(name, getattr(self, name))
        _require(0.0 < self.validation_split < 1.0, "validation_split", self.validation_split,
                 "must be strictly between 0 and 1 (the guide uses 0.2)")
        _require(0.0 < self.lr_factor < 1.0, "lr_factor", self.lr_factor, "must be strictly between 0 and 1")
        _require(self.min_delta >= 0, "min_delta", self.min_delta, "must be >= 0")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _require(0.0 <= self.augmentation_rate <= 1.0, "augmentation_rate", self.augmentation_rate,
                 "must be in [0, 1]")
        _require(isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
                 "seed", self.seed, "must be a non-negative integer")
        _require(self.loss in ("nll", "mse"), "loss", self.loss, "choose nll (the default) or mse")
        for name in ("garch_weight", "har_weight"):
            w = getattr(self, name)
            _require(isinstance(w, (int, float)) and not isinstance(w, bool) and 0.0 <= w <= 1.0, name, w,
                     "must be in [0, 1] (0 leaves that model out of the served pool; default 1/3)")
        _require(self.garch_weight + self.har_weight <= 1.0 + 1e-9, "garch_weight + har_weight",
                 self.garch_weight + self.har_weight, "must be <= 1: the network's weight is 1 minus their sum")

    @property
    def monitor(self) -> str:
        """What checkpoints, early stopping and learning-rate reduction watch: the validation CRPS of the
        distribution, or with the guide's MSE objective its validation loss."""
        return "val_crps" if self.loss == "nll" else "val_loss"

    @classmethod
    def default(cls, **overrides: Any) -> TrainConfig:
        return cls(**overrides)

    @classmethod
    def small(cls, **overrides: Any) -> TrainConfig:
        return cls(**{"epochs": 20, "batch_size": 16, "learning_rate": 0.002, **overrides})

    @classmethod
    def large(cls, **overrides: Any) -> TrainConfig:
        return cls(**{"epochs": 100, "batch_size": 64, "learning_rate": 0.0005, **overrides})

    @classmethod
    def high_variance(cls, **overrides: Any) -> TrainConfig:
        return cls(**{"epochs": 75, "batch_size": 32, "learning_rate": 0.001, **overrides})


PRESETS = ("default", "small", "large", "high_variance")
#: the top-level keys of a preset file; "about" is free-form provenance (e.g. the study that found it)
PRESET_FILE_KEYS = ("model_config", "train_config", "about")


def preset(name: str) -> tuple[MambaConfig, TrainConfig]:
    """Return the (model, training) configs of one row set of the guide's tuning table, or of a preset JSON
    file (`name` ending in .json or naming a file; see `load_preset`)."""
    if name in PRESETS:
        return getattr(MambaConfig, name)(), getattr(TrainConfig, name)()
    if name.endswith(".json") or Path(name).exists():
        return load_preset(name)
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}, or a preset JSON file")


def load_preset(path: str | Path) -> tuple[MambaConfig, TrainConfig]:
    """The configs of a preset file: a JSON object with "model_config" and/or "train_config" objects whose keys
    override the defaults (what `mambacast tune` writes: both in full, and "about"). ValueError naming the file
    and the problem otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"preset file {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"preset file {path} is a folder, not a JSON file") from None
    except OSError as exc:
        raise ValueError(f"preset file {path} cannot be read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"preset file {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"preset file {path} must hold a JSON object with model_config and/or train_config")
    unknown = sorted(set(data) - set(PRESET_FILE_KEYS))
    if unknown or not ({"model_config", "train_config"} & set(data)):
        raise ValueError(f"preset file {path} has the key(s) {unknown or sorted(data)}; a preset holds "
                         "model_config and/or train_config (and about)")
    configs: list[Any] = []
    for key, cls in (("model_config", MambaConfig), ("train_config", TrainConfig)):
        section = data.get(key, {})
        if not isinstance(section, dict):
            raise ValueError(f"preset file {path}: {key} must be a JSON object")
        try:
            configs.append(cls.from_dict(section))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"preset file {path}: {key}: {exc}") from None
    return configs[0], configs[1]


def save_preset(path: str | Path, model_config: MambaConfig, train_config: TrainConfig,
                about: dict[str, Any] | None = None) -> Path:
    """Write a preset file `--preset PATH` reads (both configs in full, `about` as provenance)."""
    path = Path(path)
    data = {"model_config": model_config.to_dict(), "train_config": train_config.to_dict(), **({"about": about}
                                                                                               if about else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
