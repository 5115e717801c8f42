"""Three cases in a real `python -m mambacast.cli` process (a usage error, a refused training state, a damaged
model under --strict): what a terminal shows is one line too. The in-process harness of the other files emulates
main's logging; this checks the emulation where log lines could add up (training, loading a model)."""

import os
import shutil
import subprocess
import sys

from .conftest import TINY
from .test_states import DAMAGE as STATE_DAMAGE
from .test_weights import flip_last_byte


def test_one_line_in_a_real_process(good, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(good.root, tampered)
    flip_last_byte(type(good)(tampered, good.spare, {}))
    STATE_DAMAGE["zeroed tensors"][0](good.store.state_path("MSFT"))
    good.refresh()
    cases = [   # argv, exit status, what the line says
        (["train", "--symbols", "AAPL", "--epochs", "x"], 2, "argument --epochs: invalid int value"),
        (["train", "--symbols", "MSFT", "--resume", "--save-dir", str(good.root), "--quiet", *TINY], 1,
         "cannot resume"),
        (["predict", "--symbols", "AAPL", "--save-dir", str(tampered), "--strict"], 4, "does not match the SHA-256"),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-m", "mambacast.cli", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for argv, _, _ in cases]
    for proc, (argv, status, match) in zip(procs, cases, strict=True):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == status, (argv, out, err)
        assert err.count("\n") == 1 and match in err, (argv, err)
        assert "Traceback" not in out + err
    assert good.unchanged()
