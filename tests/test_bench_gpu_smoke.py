"""benchmarks/bench_gpu.py at its smoke sizes on this machine: every section runs to the end without an error, so
the scarce GPU time is not lost to a mistake in the script (on the GPU it runs at full size)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_section_of_the_gpu_benchmark_runs(tmp_path):
    out = tmp_path / "bench.json"
    # without Triton's interpreter (which other test modules switch on for this process): on a CPU the Triton
    # rows then say they cannot run, as on a machine without Triton
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    sections = ("one_symbol_50_epochs", "stack", "train_step", "forward_1m", "profile", "one_symbol_profile",
                "scan_sweep", "checkpoint", "conv")
    assert set(sections) <= set(results), sorted(results)
    errors = {name: results[name] for name in sections if "error" in json.dumps(results[name])}
    assert not errors, errors
    assert results["env"]["smoke"] is True
