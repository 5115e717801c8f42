"""`mambacast tune` on a real local Ray cluster (2 CPUs, no mocks): 4 trials, a preset that trains, resume."""

from __future__ import annotations

import json
import sys

import pytest

from mambacast.cli import main
from mambacast.config import preset
from mambacast.store import ModelStore

from .samples import needs_bokeh

optuna = pytest.importorskip("optuna", reason="Optuna is not installed (pip install 'mambacast[ray]')")

TINY = ["--symbols", "AAPL", "--preset", "small", "--epochs", "2", "--days", "400", "--seed", "7"]


def _paths(tmp_path, name="s"):
    return ["--storage", str(tmp_path / f"{name}.db"), "--out", str(tmp_path / f"{name}.json"),
            "--plot", str(tmp_path / f"{name}.png")]


@needs_bokeh
def test_tune_runs_four_trials_and_writes_a_preset_that_trains(ray_cluster, tmp_path, capsys):
    code = main(["tune", *TINY, "--trials", "4", *_paths(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "4/4 trials finished" in out and out.count("trial ") >= 4
    assert "trial 0 [" in out                      # the base preset is the first trial
    study = optuna.load_study(study_name="AAPL-small", storage=f"sqlite:///{tmp_path / 's.db'}")
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 4 and study.trials[0].user_attrs.get("base_preset") is True
    assert all(t.state != optuna.trial.TrialState.COMPLETE or 0 < t.value < 2 for t in finished)
    # the preset is the best complete trial's configuration, with where it came from
    written = json.loads((tmp_path / "s.json").read_text())
    assert written["about"]["trial"] == study.best_trial.number
    assert written["about"]["value"] == pytest.approx(study.best_value)
    model, train = preset(str(tmp_path / "s.json"))
    assert model.d_model == study.best_params["d_model"] and train.batch_size == study.best_params["batch_size"]
    assert (tmp_path / "s.png").stat().st_size > 10_000
    # ... and `train --preset PATH` trains with it
    store = tmp_path / "store"
    assert main(["train", "--symbols", "AAPL", "--preset", str(tmp_path / "s.json"), "--days", "400",
                 "--save-dir", str(store), "--quiet"]) == 0
    meta = ModelStore(store).load_metadata("AAPL")
    assert meta["model_config"] == model.to_dict() and meta["train_config"] == train.to_dict()


@needs_bokeh
def test_tune_resumes_its_study(ray_cluster, tmp_path, capsys):
    """A second run continues the SQLite study: finished trials count, a trial left running by an interrupted
    run is marked failed and not counted; a study is not resumed on other data."""
    assert main(["tune", *TINY, "--trials", "1", *_paths(tmp_path)]) == 0
    study = optuna.load_study(study_name="AAPL-small", storage=f"sqlite:///{tmp_path / 's.db'}")
    study.ask()                                       # as if a run had been killed during this trial
    capsys.readouterr()
    assert main(["tune", *TINY, "--trials", "2", *_paths(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "resuming study AAPL-small" in out and "1/2 trials finished; 1 interrupted trial(s) marked failed" in out
    assert "2/2 trials finished" in out
    states = [t.state.name for t in optuna.load_study(study_name="AAPL-small",
                                                      storage=f"sqlite:///{tmp_path / 's.db'}").trials]
    assert states[:2] == ["COMPLETE", "FAIL"] and len(states) == 3
    assert main(["tune", *TINY[:-2], "--seed", "8", "--trials", "3", *_paths(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "was started with other base_train" in err and "Traceback" not in err


def test_tune_user_errors_are_one_line(tmp_path, capsys, monkeypatch):
    def run(*argv: str) -> str:
        assert main(["tune", *argv, *_paths(tmp_path)]) == 2
        err = capsys.readouterr().err
        # Ray itself may log to stderr (e.g. a raylet line about an earlier test's killed worker): count ours
        assert len([x for x in err.splitlines() if x.startswith("mambacast:")]) == 1, err
        assert "Traceback" not in err, err
        return err

    assert "--trials 0 is invalid" in run("--symbols", "AAPL", "--trials", "0")
    assert "--end 'May' is not a date" in run("--symbols", "AAPL", "--end", "May")
    assert "outside the search space" in run("--symbols", "AAPL", "--preset", _preset(tmp_path, d_model=48))
    monkeypatch.setitem(sys.modules, "optuna", None)          # as if the extra were not installed
    assert "pip install 'mambacast[ray]'" in run("--symbols", "AAPL")


def _preset(tmp_path, **model):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"model_config": model}))
    return str(path)
