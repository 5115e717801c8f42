"""Wrong flags and flag values: one line naming the flag (the usage block stays on --help), exit 2."""

import pytest

from .conftest import TINY, assert_one_line, run_cli

TRAIN = ["train", "--symbols", "AAPL"]
PREDICT = ["predict", "--symbols", "AAPL"]
BACKTEST = ["backtest", "--symbols", "AAPL", "--no-model"]

CASES = [
    # argparse: types, choices, unknown or missing arguments
    ([*TRAIN, "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    ([*TRAIN, "--batch-size", "1.5"], "argument --batch-size: invalid int value"),
    ([*TRAIN, "--learning-rate", "fast"], "argument --learning-rate: invalid float value"),
    ([*TRAIN, "--loss", "mae"], "argument --loss: invalid choice"),
    ([*TRAIN, "--source", "ftp"], "argument --source: invalid choice"),
    ([*TRAIN, "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["train", "--test", "--symbols", "AAPL"], "not allowed with argument --test"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["data"], "the following arguments are required"),
    (["data", "check"], "the following arguments are required: --symbols"),
    (["data", "check", "--symbols", "AAPL", "--days", "x"], "invalid days value 'x'"),
    (["data", "check", "--symbols", "AAPL", "--days", "0"], "invalid days value '0'"),
    (["predict"], "the following arguments are required: --symbols"),
    ([*PREDICT, "--model", "best"], "argument --model: invalid choice"),
    ([*PREDICT, "--strike", "abc"], "argument --strike: invalid float value"),
    ([*BACKTEST, "--window", "sliding"], "argument --window: invalid choice"),
    # values the commands check
    (["train"], "say what to train"),
    ([*TRAIN, "--epochs", "0"], "epochs=0 is invalid"),
    ([*TRAIN, "--batch-size", "-4"], "batch_size=-4 is invalid"),
    ([*TRAIN, "--learning-rate", "-1"], "learning_rate=-1.0 is invalid"),
    ([*TRAIN, "--learning-rate", "nan"], "learning_rate=nan is invalid"),
    ([*TRAIN, "--seed", "-1"], "seed=-1 is invalid"),
    ([*TRAIN, "--har-weight", "1.5"], "har_weight=1.5 is invalid"),
    ([*TRAIN, "--garch-weight", "0.7", "--har-weight", "0.5"], "garch_weight + har_weight=1.2 is invalid"),
    (["backtest", "--symbols", "AAPL", "--garch-weight", "-0.1"], "garch_weight=-0.1 is invalid"),
    ([*TRAIN, "--days", "0"], "--days 0 is invalid"),
    ([*TRAIN, "--parallel", "0"], "--parallel 0 is invalid"),
    ([*TRAIN, "--stack", "--parallel", "2", "--device", "cuda"], "--parallel > 1 trains in CPU worker processes"),
    ([*TRAIN, "--global", "--stack"], "--global trains one pooled model"),
    ([*TRAIN, "--source", "csv"], "--source csv needs --data"),
    (["train", "--symbols", "TIER_9"], "TIER_9"),
    (["train", "--symbols", ","], "symbol"),
    ([*TRAIN, "--device", "banana"], "--device 'banana' is not a device"),
    ([*TRAIN, "--device", "tpu"], "--device 'tpu' is not"),
    ([*TRAIN, "--device", "meta"], "--device 'meta' is not supported"),
    ([*TRAIN, "--device", "cuda:99"], "--device cuda:99"),
    ([*PREDICT, "--strike", "-5"], "--strike -5.0 is invalid"),
    ([*PREDICT, "--strike", "nan"], "--strike nan is invalid"),
    ([*PREDICT, "--as-of", "soon"], "--as-of 'soon' is not a date"),
    ([*PREDICT, "--as-of", "2099-01-01"], "--as-of 2099-01-01 is outside AAPL's prices"),
    ([*PREDICT, "--as-of", "1900-01-01"], "--as-of 1900-01-01 is outside AAPL's prices"),
    (["predict", "--symbols", "NOPEX"], "unknown symbol 'NOPEX'"),
    (["backtest"], "say what to backtest"),
    ([*BACKTEST, "--horizons", "1,x"], "--horizons '1,x' is invalid"),
    ([*BACKTEST, "--horizons", "5,1"], "horizons=[5, 1] is invalid"),
    ([*BACKTEST, "--refit-every", "0"], "--refit-every 0 is invalid"),
    ([*BACKTEST, "--start", "someday"], "--start 'someday' is not a date"),
    (["backtest", "--symbols", "AAPL", "--seeds", "1,1"], "seeds must be non-negative and distinct"),
    ([*BACKTEST, "--seeds", "1,2"], "--seeds needs the model"),
    (["backtest", "--symbols", "AAPL", "--device", "banana"], "--device 'banana' is not a device"),
    ([*BACKTEST, "--baselines", "oracle"], "oracle"),
]


@pytest.mark.parametrize("argv, match", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_a_wrong_flag_is_one_line(good, tmp_path, argv, match):
    where = {"train": ["--save-dir", str(good.root), *TINY[:2]], "predict": ["--save-dir", str(good.root)],
             "backtest": ["--report", str(tmp_path / "report")]}.get(argv[0], [])
    code, out, err = run_cli([*argv, *where])
    assert_one_line(code, out, err, 2, match)
    assert good.unchanged()
    assert not (tmp_path / "report").exists() or not any((tmp_path / "report").iterdir())


@pytest.mark.parametrize("value, match", [
    ("huge", "unknown preset 'huge'; choose one of default, small, large, high_variance, or a preset JSON file"),
    ("nowhere.json", "preset file nowhere.json does not exist"),
    ("{folder}", "is a folder, not a JSON file"),
    ("{bad}", "train_config: unknown TrainConfig key(s) ['epoch']"),
])
def test_a_wrong_preset_is_one_line(good, tmp_path, value, match):
    bad = tmp_path / "bad.json"
    bad.write_text('{"train_config": {"epoch": 3}}')
    value = value.format(folder=tmp_path, bad=bad)
    code, out, err = run_cli([*TRAIN, "--save-dir", str(good.root), "--preset", value])
    assert_one_line(code, out, err, 2, match)
    assert good.unchanged()


@pytest.mark.parametrize("argv", [[*TRAIN, *TINY], ["backtest", "--symbols", "AAPL", "--epochs", "1"]],
                         ids=["train", "backtest"])
def test_a_wrong_precision_switch_is_one_line_before_any_work(good, tmp_path, monkeypatch, argv):
    """MAMBACAST_CPU_BF16 is checked with the flags: one line, exit 2, not one failure per symbol after its data."""
    monkeypatch.setenv("MAMBACAST_CPU_BF16", "yes")
    where = ["--save-dir", str(good.root)] if argv[0] == "train" else ["--report", str(tmp_path / "report")]
    code, out, err = run_cli([*argv, *where])
    assert_one_line(code, out, err, 2, "MAMBACAST_CPU_BF16='yes': use 1")
    assert good.unchanged() and not (tmp_path / "report").exists()


def test_help_still_shows_the_usage(capsys):
    code, out, err = run_cli(["train", "--help"])
    assert code == 0 and out.startswith("usage: mambacast train") and "--save-dir" in out and err == ""
