"""Hyper-parameter search (`mambacast tune`): an Optuna study over the guide's tuning table, trials on Ray.

The objective of a trial is the validation CRPS the pipeline itself selects models by: each symbol is
trained with the trial's configuration on its history up to `end` (the 80/20 split with its embargo, as
`mambacast train` does), and the trial's value is the mean over the symbols of the best validation CRPS
(the model `train` would store). Nothing after `end` is read, so a later test period stays unseen.

One Ray actor (`_StudyBroker`, no CPU, on the driver's node) owns the study and its SQLite file: it hands out
trials, takes the per-epoch reports the trials send from their workers and answers whether to prune, and
records the results. Every trial is a Ray task; as many run at once as the cluster has CPU slots. The study
lives in SQLite, so an interrupted run resumes with the same command: trials that were running are marked
failed (and not counted), finished ones are kept. The first trial of a new study is the base preset itself,
so the study says whether tuning beat it on the same data and seed.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import MambaConfig, TrainConfig, save_preset

__all__ = ["SPACE", "TuneSpec", "run_study", "configs_from", "plot_study", "OPTUNA_EXTRA"]

log = logging.getLogger(__name__)

OPTUNA_EXTRA = "pip install 'mambacast[ray]'"
#: the search space: the guide's table (d_model, d_state, num_layers, batch_size, learning_rate) a little
#: widened, with the window length and the augmentation rate (noise, magnitude warping, feature dropout)
SPACE: dict[str, Any] = {
    "d_model": [16, 32, 64, 96, 128],
    "d_state": [4, 8, 16, 24, 32],
    "num_layers": (1, 6),
    "learning_rate": (1e-4, 1e-2),
    "batch_size": [16, 32, 64],
    "sequence_length": [30, 60, 90],
    "augmentation_rate": [0.0, 0.25, 0.5],
}
_MODEL_KEYS = ("d_model", "d_state", "num_layers")
# The first trials are sampled at random (TPE needs a few results), and pruning starts after as many.
_STARTUP_TRIALS = 5
_INTERRUPTED = "interrupted"

TuneProgress = Callable[[str, dict[str, Any]], None]


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ImportError(f"Optuna is not installed: {OPTUNA_EXTRA}") from None
    return optuna


def suggest(trial: Any) -> dict[str, Any]:
    """The trial's point in `SPACE`."""
    s = SPACE
    return {
        "d_model": trial.suggest_categorical("d_model", s["d_model"]),
        "d_state": trial.suggest_categorical("d_state", s["d_state"]),
        "num_layers": trial.suggest_int("num_layers", *s["num_layers"]),
        "learning_rate": trial.suggest_float("learning_rate", *s["learning_rate"], log=True),
        "batch_size": trial.suggest_categorical("batch_size", s["batch_size"]),
        "sequence_length": trial.suggest_categorical("sequence_length", s["sequence_length"]),
        "augmentation_rate": trial.suggest_categorical("augmentation_rate", s["augmentation_rate"]),
    }


def configs_from(params: dict[str, Any], base_model: MambaConfig,
                 base_train: TrainConfig) -> tuple[MambaConfig, TrainConfig]:
    """The base configs with a trial's parameters put in."""
    model = {k: v for k, v in params.items() if k in _MODEL_KEYS}
    train = {k: v for k, v in params.items() if k not in _MODEL_KEYS}
    return (MambaConfig.from_dict({**base_model.to_dict(), **model}),
            TrainConfig.from_dict({**base_train.to_dict(), **train}))


def base_params(model: MambaConfig, train: TrainConfig) -> dict[str, Any]:
    """The base preset as a point of the space (enqueued as the study's first trial); ValueError if it is not
    one (a preset file with values outside the space)."""
    params = {**{k: getattr(model, k) for k in _MODEL_KEYS},
              **{k: getattr(train, k) for k in SPACE if k not in _MODEL_KEYS}}
    for key, allowed in SPACE.items():
        inside = params[key] in allowed if isinstance(allowed, list) else allowed[0] <= params[key] <= allowed[1]
        if not inside:
            raise ValueError(f"the base preset's {key}={params[key]!r} is outside the search space {allowed}")
    return params


@dataclass
class TuneSpec:
    """What the study tunes on: the symbols' prices (already cut at `end`), the base configs, trials."""

    symbols: list[str]
    prices: dict[str, Any]
    base_model: MambaConfig
    base_train: TrainConfig
    trials: int
    study_name: str
    storage: Path
    include_volume: bool = False
    about: dict[str, Any] = field(default_factory=dict)


# ---- the study's owner (a Ray actor) ---------------------------------------------------------------------
class _StudyBroker:
    """Owns the Optuna study (the only process that opens its SQLite file)."""

    def __init__(self, storage: str, study_name: str, seed: int, base: dict[str, Any]):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.study = optuna.create_study(
            storage=storage, study_name=study_name, direction="minimize", load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=_STARTUP_TRIALS, constant_liar=True),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=_STARTUP_TRIALS, n_warmup_steps=2))
        self.trials: dict[int, Any] = {}
        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for t in running:   # left running by an interrupted run: failed, and not counted
            self.study._storage.set_trial_user_attr(t._trial_id, _INTERRUPTED, True)
            self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        if not self.study.trials:
            self.study.enqueue_trial(base, user_attrs={"base_preset": True})
        self.resumed = len(running)

    def counts(self) -> dict[str, int]:
        states = self.optuna.trial.TrialState
        done = [t for t in self.study.get_trials(deepcopy=False)
                if t.state in (states.COMPLETE, states.PRUNED, states.FAIL) and not t.user_attrs.get(_INTERRUPTED)]
        return {"finished": len(done), "resumed_running": self.resumed}

    def ask(self) -> tuple[int, dict[str, Any]]:
        trial = self.study.ask()
        params = suggest(trial)
        self.trials[trial.number] = trial
        return trial.number, params

    def report(self, number: int, step: int, value: float) -> bool:
        trial = self.trials[number]
        trial.report(value, step)
        return bool(trial.should_prune())

    def tell(self, number: int, state: str, value: float | None = None, attrs: dict[str, Any] | None = None) -> None:
        trial = self.trials.pop(number)
        for key, v in (attrs or {}).items():
            trial.set_user_attr(key, v)
        states = self.optuna.trial.TrialState
        if state == "complete":
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=states.PRUNED if state == "pruned" else states.FAIL)

    def best(self) -> dict[str, Any] | None:
        states = self.optuna.trial.TrialState
        complete = self.study.get_trials(deepcopy=False, states=(states.COMPLETE,))
        if not complete:
            return None
        best = min(complete, key=lambda t: t.value)
        base = [t for t in complete if t.user_attrs.get("base_preset")]
        return {"number": best.number, "value": best.value, "params": best.params,
                "base_value": base[0].value if base else None, "complete": len(complete)}


# ---- one trial (a Ray task) ------------------------------------------------------------------------------
class _Pruned(Exception):
    pass


def _run_trial(number: int, params: dict[str, Any], spec: dict[str, Any], prices: dict[str, Any], broker: Any,
               threads: int) -> dict[str, Any]:
    """Train every symbol with the trial's configuration (in a scratch store), reporting the best validation
    CRPS so far after each epoch; returns the state ("complete", "pruned", "failed") and the value."""
    import ray
    import torch

    from .train.pipeline import _prepare_run

    torch.set_num_threads(threads)
    model_config, train_config = configs_from(params, spec["base_model"], spec["base_train"])
    t0 = time.perf_counter()
    values: list[float] = []
    epochs = train_config.epochs
    try:
        with tempfile.TemporaryDirectory(prefix="mambacast-trial-") as scratch:
            for i, symbol in enumerate(spec["symbols"]):
                best = [math.inf]

                def progress(event: str, sym: str, data: dict[str, Any], i: int = i, best: list[float] = best) -> None:
                    if event in ("baseline", "epoch"):
                        best[0] = min(best[0], data["val_crps"])
                    if event == "epoch" and ray.get(broker.report.remote(number, i * epochs + data["epoch"],
                                                                         best[0])):
                        raise _Pruned(f"{sym} epoch {data['epoch'] + 1}")

                run = _prepare_run(symbol, model_config=model_config, train_config=train_config,
                                   prices=prices[symbol], save_dir=scratch, device="cpu",
                                   include_volume=spec["include_volume"], progress=progress)
                run.trainer.fit(*run.fit_data)
                values.append(float(run.tracker.get_summary()["best_val_crps"]))
    except _Pruned as exc:
        return {"state": "pruned", "at": str(exc), "seconds": time.perf_counter() - t0}
    except Exception as exc:   # a configuration that diverges, or runs out of memory: this trial fails
        return {"state": "failed", "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}
    return {"state": "complete", "value": sum(values) / len(values), "per_symbol": values,
            "seconds": time.perf_counter() - t0}


# ---- the driver ------------------------------------------------------------------------------------------
def run_study(spec: TuneSpec, address: str | None = None, *, progress: TuneProgress | None = None,
              cpus_per_trial: int = 1, timeout: float | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Run (or resume) the study until it has `spec.trials` finished trials or `timeout` seconds pass, as many
    trials at once as the cluster has slots; returns the best trial (number, value, params, base_value) and
    the counts. Raises ImportError without Optuna or Ray, ConnectionError/ValueError for a bad address."""
    optuna = import_optuna()
    from .train.distributed import ray_session

    emit = progress or (lambda event, data: None)
    spec.storage.parent.mkdir(parents=True, exist_ok=True)
    storage_url = f"sqlite:///{spec.storage.resolve()}"
    base = base_params(spec.base_model, spec.base_train)
    _check_same_study(optuna, storage_url, spec)
    t0 = time.perf_counter()
    with ray_session(address, num_cpus) as ray:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        broker = ray.remote(num_cpus=0, scheduling_strategy=here)(_StudyBroker).remote(
            storage_url, spec.study_name, spec.base_train.seed, base)
        counts = ray.get(broker.counts.remote())
        emit("study", {"finished": counts["finished"], "interrupted": counts["resumed_running"],
                       "trials": spec.trials, "storage": str(spec.storage), "name": spec.study_name})
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_trial)
        task = ray.remote(num_cpus=cpus_per_trial, max_retries=2)(_run_trial)
        shared = {"symbols": spec.symbols, "base_model": spec.base_model, "base_train": spec.base_train,
                  "include_volume": spec.include_volume}
        prices_ref = ray.put(spec.prices)    # once into the object store, not once per trial
        finished, pending = counts["finished"], {}
        try:
            while True:
                out_of_time = timeout is not None and time.perf_counter() - t0 > timeout
                while not out_of_time and len(pending) < slots and finished + len(pending) < spec.trials:
                    number, params = ray.get(broker.ask.remote())
                    pending[task.remote(number, params, shared, prices_ref, broker, cpus_per_trial)] = (number, params)
                if not pending:
                    break
                [ref], _ = ray.wait(list(pending), num_returns=1)
                number, params = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:   # its worker died three times
                    result = {"state": "failed", "error": f"{type(exc).__name__}", "seconds": 0.0}
                attrs = {k: v for k, v in result.items() if k in ("per_symbol", "at", "error", "seconds")}
                ray.get(broker.tell.remote(number, result["state"], result.get("value"), attrs))
                finished += 1
                emit("trial", {"number": number, "params": params, "finished": finished, "trials": spec.trials,
                               **result})
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        best = ray.get(broker.best.remote())
    return {"best": best, "finished": finished, "seconds": time.perf_counter() - t0}


def _check_same_study(optuna: Any, storage_url: str, spec: TuneSpec) -> None:
    """A study resumes only on the data, symbols and base configuration it started with (its values would not
    compare otherwise); the first run records them in the study. ValueError otherwise."""
    from .train.prepare import data_fingerprint

    signature = {"symbols": spec.symbols, "data": {s: data_fingerprint(f) for s, f in spec.prices.items()},
                 "base_model": spec.base_model.to_dict(), "base_train": spec.base_train.to_dict(),
                 "include_volume": spec.include_volume}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage_url, study_name=spec.study_name, direction="minimize",
                                load_if_exists=True)
    saved = study.user_attrs.get("spec")
    if saved is None:
        study.set_user_attr("spec", signature)
    elif saved != signature:
        differ = ", ".join(k for k in signature if saved.get(k) != signature[k])
        raise ValueError(f"study {spec.study_name} in {spec.storage} was started with other {differ}; resume it "
                         "with the same command, or pick another --study-name or --storage")


def write_best_preset(path: str | Path, spec: TuneSpec, best: dict[str, Any]) -> Path:
    """The best trial's configuration as a preset file for `mambacast train --preset PATH`."""
    model, train = configs_from(best["params"], spec.base_model, spec.base_train)
    about = {**spec.about, "study": spec.study_name, "storage": str(spec.storage), "trial": best["number"],
             "objective": "mean best validation CRPS (in target standard deviations) over the symbols",
             "value": best["value"], "base_preset_value": best["base_value"],
             "complete_trials": best["complete"]}
    return save_preset(path, model, train, about=about)


def plot_study(storage: Path, study_name: str, path: str | Path) -> Path | None:
    """Optimisation history (each trial's value, the best so far) and parameter importance (PED-ANOVA, no
    extra dependency) of the study, as a PNG; None without matplotlib or with fewer than two complete trials."""
    optuna = import_optuna()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed (pip install 'mambacast[plots]'); no study plot")
        return None
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{Path(storage).resolve()}")
    states = optuna.trial.TrialState
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == states.COMPLETE]
    if len(complete) < 2:
        return None
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state == states.PRUNED]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1.4, 1]})
    ax1.scatter([t.number for t in complete], [t.value for t in complete], s=18, label="complete trial")
    if pruned:
        last = [min(t.intermediate_values.values()) if t.intermediate_values else math.nan for t in pruned]
        ax1.scatter([t.number for t in pruned], last, s=18, marker="x", color="tab:gray",
                    label="pruned (best so far when stopped)")
    best, running = math.inf, []
    for t in complete:
        best = min(best, t.value)
        running.append(best)
    ax1.step([t.number for t in complete], running, where="post", color="tab:red", label="best so far")
    base = [t for t in complete if t.user_attrs.get("base_preset")]
    if base:
        ax1.axhline(base[0].value, color="tab:green", ls="--", lw=1, label="base preset")
    ax1.xaxis.get_major_locator().set_params(integer=True)
    ax1.set_xlabel("trial")
    ax1.set_ylabel("validation CRPS")
    ax1.set_title(f"{study_name}: optimisation history")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    try:
        importance = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError) as exc:   # too few or too similar trials
        log.info("no parameter importance for %s: %s", study_name, exc)
        importance = {}
    names = list(importance)[::-1]
    ax2.barh(names, [importance[n] for n in names], color="tab:blue")
    ax2.set_title("parameter importance (PED-ANOVA)" if names else "parameter importance: too few trials")
    ax2.set_xlabel("importance")
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.9, wspace=0.35)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def load_tuning_prices(symbols: Sequence[str], days: int, end: str | None, source: str, data_path: str | None,
                       include_volume: bool) -> dict[str, Any]:
    """Each symbol's last `days` days up to `end` (inclusive), checked; DataError naming the symbol if bad."""
    import pandas as pd

    from .data.quality import check_data_quality
    from .data.sources import load_prices

    prices = {}
    for symbol in symbols:
        frame = load_prices(symbol, days=None, source=source, path=data_path, with_volume=include_volume)
        if end is not None:
            frame = frame.loc[: pd.Timestamp(end)]
        frame = frame.iloc[-days:]
        check_data_quality(frame, symbol)
        prices[symbol] = frame
    return prices
