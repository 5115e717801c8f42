"""Inference after training: the heap that `ops.heap.kept_heap` leaves behind, against a process that never trained.

Run: .venv/bin/python benchmarks/bench_heap.py [--rounds 3]

Each row is a fresh interpreter that builds the guide's model and times `Trainer.evaluate` (the model's Student-t
over a set of windows, in batches of up to 512, and its loss, MAE and CRPS; what the validation report, the
calibration and a notebook's batch predictions run) over 1, 170, 700 and 3000 random windows, median of 8-40
calls:

- `never trained`: glibc's adaptive thresholds, as in a process that only predicts;
- `after training`: after one `kept_heap()` context exited, as after any `Trainer.fit` (the thresholds it sets
  on exit, `ops.heap`);
- `after training, 128 KiB`: the thresholds kept_heap set on exit until 2026-11-28 (glibc's start values,
  fixed: every block above 128 KiB mapped afresh), for comparison.

The rows alternate over `--rounds`, so the machine's slow spells hit them alike.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

SIZES = (1, 170, 700, 3000)

CHILD = """
import json, statistics, sys, time, torch
from mambacast import MambaConfig, MambaModel, TrainConfig
from mambacast.ops import heap
from mambacast.train.trainer import Trainer

mode, SIZES = sys.argv[1], json.loads(sys.argv[2])
if mode != "never trained":
    with heap.kept_heap():
        pass
    if mode == "after training, 128 KiB" and heap._glibc() is not None:
        heap._glibc().mallopt(heap._M_MMAP_THRESHOLD, 128 << 10)
        heap._glibc().mallopt(heap._M_TRIM_THRESHOLD, 128 << 10)
torch.manual_seed(0)
trainer = Trainer(MambaModel(MambaConfig(), 30), TrainConfig())
out = {}
for n in SIZES:
    X, y = torch.randn(n, 60, 30), torch.randn(n, 4)
    times = []
    for _ in range(40 if n < 700 else 8):
        t0 = time.perf_counter()
        trainer.evaluate(X, y)
        times.append(time.perf_counter() - t0)
    out[n] = statistics.median(times) * 1e3
print(json.dumps(out))
"""

MODES = ("never trained", "after training", "after training, 128 KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            done = subprocess.run([sys.executable, "-c", CHILD, mode, json.dumps(SIZES)], capture_output=True,
                                  text=True, check=True)
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"Trainer.evaluate, guide config, ms (median of calls; the range over {args.rounds} rounds)")
    print(f"{'process':26s}" + "".join(f"{f'{n} windows':>20s}" for n in SIZES))
    for mode, rows in runs.items():
        cells = []
        for n in SIZES:
            v = sorted(r[str(n)] for r in rows)
            cells.append(f"{v[0]:.1f}-{v[-1]:.1f}" if len(v) > 1 else f"{v[0]:.1f}")
        print(f"{mode:26s}" + "".join(f"{c:>20s}" for c in cells))
    never = runs["never trained"]
    after = runs["after training"]
    ratios = [min(r[str(n)] for r in after) / min(r[str(n)] for r in never) for n in SIZES]
    print("SUMMARY after training / never trained (best of rounds): "
          + ", ".join(f"{n} windows {q:.2f}x" for n, q in zip(SIZES, ratios, strict=True)))


if __name__ == "__main__":
    main()
