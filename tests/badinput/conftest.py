"""The bad-input suite (issue 14): every user mistake is one line on stderr, a non-zero exit, no traceback,
and a good model store that is byte-for-byte what it was.

One tiny store is trained once per session: AAPL complete, MSFT interrupted after its first epoch (its
training state and checkpoints, no final model), and MSFT's complete files kept aside for the cases that
copy another symbol's model. Each case runs on its own copy.

Cases run the command line in this process (`run_cli`): stdout and stderr are captured and the log goes
to stderr as `main` configures it for a terminal, so "one line" counts what a user would see.
`test_real_process.py` runs a few of them in a real process to check that this holds there too.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mambacast.cli import main
from mambacast.data.sources import load_prices
from mambacast.store import ModelStore

TINY = ["--preset", "small", "--epochs", "1", "--days", "400", "--batch-size", "64", "--seed", "3"]


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path (empty folders do not matter to a store)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class GoodStore:
    """A copy of the session's good store, and its digest when the case started."""

    root: Path
    spare: Path          # MSFT's complete model files, kept outside the store
    before: dict[str, str]

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.root)

    def refresh(self) -> None:
        """Take the digest again (after a case damaged the store on purpose, before running the command)."""
        self.before = tree_digest(self.root)

    def unchanged(self) -> bool:
        return tree_digest(self.root) == self.before


@pytest.fixture(scope="session")
def _template(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("badinput") / "store"
    spare = root.parent / "spare"
    assert main(["train", "--symbols", "AAPL,MSFT", "--save-dir", str(root), "--quiet", *TINY]) == 0
    store = ModelStore(root)
    spare.mkdir()
    for path in (store.weights_path("MSFT"), store.metadata_path("MSFT"), store.metrics_path("MSFT"),
                 store.plot_path("MSFT")):
        shutil.move(path, spare / path.name)             # MSFT: an interrupted run (state, no model)
    return root, spare


@pytest.fixture
def good(_template, tmp_path) -> GoodStore:
    root = tmp_path / "store"
    shutil.copytree(_template[0], root)
    return GoodStore(root, _template[1], tree_digest(root))


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`mambacast argv` in this process: (exit status, stdout, stderr), the log on stderr as a user sees it."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))   # main's format
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:             # argparse
                code = exc.code
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return int(code), out.getvalue(), err.getvalue()


def assert_one_line(code: int, out: str, err: str, status: int, match: str) -> None:
    """The contract of every case: this exit status, one line on stderr saying `match`, no traceback."""
    assert code == status, (code, out, err)
    assert err.endswith("\n") and err.count("\n") == 1, f"stderr is not one line:\n{err}"
    assert match.lower() in err.lower(), err
    assert "Traceback" not in out + err


# ---- files a user might hand to --source csv / parquet --------------------------------------------------
def _good_rows(n: int = 400) -> pd.DataFrame:
    frame = load_prices("AAPL", days=n)[["close"]].reset_index()
    frame.insert(0, "symbol", "AAPL")
    return frame


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad price files, by name (each a CSV unless its name says otherwise)."""
    d = tmp_path_factory.mktemp("files")
    rows = _good_rows()
    made: dict[str, Path] = {}

    def csv(name: str, frame: pd.DataFrame | str) -> None:
        made[name] = d / f"{name}.csv"
        if isinstance(frame, str):
            made[name].write_text(frame)
        else:
            frame.to_csv(made[name], index=False)

    csv("empty", "")
    csv("header_only", "symbol,date,close\n")
    csv("no_close", rows.rename(columns={"close": "price"}))
    text = rows.astype({"close": object})
    text.loc[10, "close"] = "abc"
    csv("text_close", text)
    dates = rows.astype({"date": object})
    dates.loc[10, "date"] = "2020-13-45"
    csv("bad_date", dates)
    csv("duplicate_dates", pd.concat([rows, rows.iloc[[5]]]))
    negative = rows.copy()
    negative.loc[100, "close"] = -5.0
    csv("negative", negative)
    zero = rows.copy()
    zero.loc[100, "close"] = 0.0
    csv("zero", zero)
    many_nan = rows.copy()
    many_nan.loc[np.arange(20, 400, 10), "close"] = np.nan      # 38 of 400 (9.5%)
    csv("many_nan", many_nan)
    inf = rows.astype({"close": object})
    inf.loc[100, "close"] = "inf"
    csv("inf", inf)
    csv("short", rows.iloc[:50])
    constant = rows.copy()
    constant["close"] = 100.0
    csv("constant", constant)
    made["garbage"] = d / "garbage.csv"
    made["garbage"].write_bytes(np.random.default_rng(0).bytes(3000))
    folder = d / "folder"
    folder.mkdir()
    rows.assign(symbol="MSFT").to_csv(folder / "MSFT.csv", index=False)
    made["folder_without_aapl"] = folder
    made["missing"] = d / "does_not_exist.csv"
    made["good"] = d / "good.csv"
    rows.to_csv(made["good"], index=False)
    return made
