"""Stores and output paths that cannot be used: refused in one line before any work (finding 3)."""

import os

import pytest

from .conftest import TINY, assert_one_line, run_cli, tree_digest

READ_ONLY = "/sys/mambacast-store"     # sysfs refuses new folders to every user, root included


def a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a folder\n")
    return path


PATHS = {
    "a file": (a_file, "is a file, not a folder"),
    "inside a file": (lambda t: a_file(t) / "store", "is not writable"),
    "read-only": (lambda t: READ_ONLY, "is not writable"),
}


@pytest.mark.parametrize("command", ["train", "train --global", "train --stack", "train --parallel 2"])
@pytest.mark.parametrize("kind", list(PATHS))
def test_a_save_dir_that_cannot_take_a_model(tmp_path, monkeypatch, command, kind):
    import mambacast.train.trainer as trainer

    started = []
    monkeypatch.setattr(trainer.Trainer, "fit", lambda *a, **k: started.append(1))   # no epoch may start
    make, match = PATHS[kind]
    save_dir = make(tmp_path)
    before = tree_digest(tmp_path)
    code, out, err = run_cli([*command.split(), "--symbols", "AAPL,MSFT", "--save-dir", str(save_dir), *TINY])
    assert_one_line(code, out, err, 2, match)
    assert "--save-dir" in err and not started and "Loaded" not in out
    assert tree_digest(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; /sys covers the case above")
def test_a_read_only_store_with_a_good_model(good):
    os.chmod(good.root / "weights", 0o555)
    try:
        code, out, err = run_cli(["train", "--symbols", "AAPL", "--save-dir", str(good.root), *TINY])
    finally:
        os.chmod(good.root / "weights", 0o755)
    assert_one_line(code, out, err, 2, "is not writable")
    assert good.unchanged()


def test_a_store_folder_replaced_by_a_file(good):
    import shutil

    shutil.rmtree(good.root / "metrics")
    (good.root / "metrics").write_text("oops\n")
    good.refresh()
    code, out, err = run_cli(["train", "--symbols", "AAPL", "--save-dir", str(good.root), *TINY])
    assert_one_line(code, out, err, 2, "metrics is a file")
    assert good.unchanged()


def test_a_report_folder_that_is_a_file(good, tmp_path):
    report = a_file(tmp_path)
    code, out, err = run_cli(["backtest", "--symbols", "AAPL", "--no-model", "--report", str(report)])
    assert_one_line(code, out, err, 2, "--report")
    assert "refit" not in out and report.read_text() == "not a folder\n"


def test_a_fan_chart_that_cannot_be_written(good, tmp_path):
    code, out, err = run_cli(["predict", "--symbols", "AAPL", "--save-dir", str(good.root), "--plot",
                              f"{READ_ONLY}/fan.png"])
    assert_one_line(code, out, err, 2, "--plot")
    code, out, err = run_cli(["predict", "--symbols", "AAPL", "--save-dir", str(good.root), "--plot", str(tmp_path)])
    assert_one_line(code, out, err, 2, "is a folder")
    assert good.unchanged()


def test_predict_from_a_store_that_does_not_exist(tmp_path):
    code, out, err = run_cli(["predict", "--symbols", "AAPL", "--save-dir", str(tmp_path / "nothing"), "--strict"])
    assert_one_line(code, out, err, 3, "no model for AAPL")
    assert not (tmp_path / "nothing").exists()
