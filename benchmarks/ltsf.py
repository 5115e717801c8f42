"""Long-horizon forecasting (LTSF) benchmark: our Mamba model on Exchange and ETTh1, beside published results.

Run:   .venv/bin/python benchmarks/ltsf.py                  # default (reduced protocol): 15-19 min on one CPU thread
       .venv/bin/python benchmarks/ltsf.py --full           # all windows, 30 epochs (not timed)
       .venv/bin/python benchmarks/ltsf.py --datasets Exchange --horizons 96 --epochs 2   # a quick look

Data and protocol: ../shared/datasets/SOURCES.md (skipped with a message when that folder is absent).
* Splits by time: Exchange 70/10/20% (train/validation/test), ETTh1 rows 0..8640 / 8640-96..11520 / 11520-96..14400;
  validation and test segments start `lookback` rows early so their first target is inside the split.
* Each column z-scored with the training split's mean and standard deviation (ddof 0, as sklearn's
  StandardScaler); MSE and MAE on that scale, averaged over test windows, horizon steps and columns.
* Lookback 96; horizons 96, 192, 336, 720; one model per dataset and horizon.

Our model, channel-independent: every column is a univariate series and one network (shared weights) forecasts
all of them. The window is shifted by its last value (NLinear's normalisation, Zeng et al. 2023), fed as one
feature per step to `MambaModel.encode` (the package's Mamba blocks, small preset: d_model 32, d_state 8,
2 layers), and a linear head maps the encoder's output to all H steps at once (direct multi-output); the last
value is added back. `--head flatten` (default) reads every hidden state of the window (LOOKBACK * d_model
inputs, PatchTST's head); `--head last` reads only the last one, as the stock model's heads do. The head starts
at zero, so the untrained model is the no-change forecast. Training reuses
the package's `Trainer` (Adam, MSE, clipnorm 1, early stopping with best weights restored, reduce-LR-on-plateau)
on the training windows, with validation windows for early stopping.

Compute budget (the default is not the full protocol, and says so in its output):
* `--train-stride 4`: every 4th training and validation window (all columns), the same windows every epoch; at
  most `--epochs 10` epochs with patience 3. `--full` uses stride 1 and 30 epochs.
* One torch thread (`--threads`): on a shared 2-core machine two threads waiting on each other were 15x slower.
* Test: every window (stride 1) unless `--test-stride` says otherwise; the no-change forecast (repeat the last
  value) is scored on exactly the same windows in the same run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mambacast.config import MambaConfig, TrainConfig
from mambacast.nn.mamba import MambaModel
from mambacast.train.callbacks import Callback, EarlyStopping, ReduceLROnPlateau
from mambacast.train.trainer import Trainer

LOOKBACK = 96
HORIZONS = (96, 192, 336, 720)
DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
FILES = {"Exchange": "exchange_rate.csv", "ETTh1": "ETTh1.csv"}


def borders(name: str, n_rows: int) -> tuple[list[int], list[int]]:
    """Start and end rows of the train, validation and test segments (Time-Series-Library conventions)."""
    if name == "ETTh1":
        m = 30 * 24
        return [0, 12 * m - LOOKBACK, 16 * m - LOOKBACK], [12 * m, 16 * m, 20 * m]
    n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
    n_val = n_rows - n_train - n_test
    return [0, n_train - LOOKBACK, n_rows - n_test - LOOKBACK], [n_train, n_train + n_val, n_rows]


def load(name: str, root: Path) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """z-scored (n_rows, n_columns) float32 data and the three (start, end) segments."""
    frame = pd.read_csv(root / FILES[name])
    data = frame.drop(columns=[frame.columns[0]]).to_numpy(dtype=np.float64)
    b1, b2 = borders(name, len(data))
    train = data[b1[0]: b2[0]]
    data = (data - train.mean(axis=0)) / train.std(axis=0)
    return data.astype(np.float32), list(zip(b1, b2, strict=True))


def windows(data: np.ndarray, segment: tuple[int, int], horizon: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Channel-independent windows: X (n_windows * n_columns, LOOKBACK, 1), Y (n_windows * n_columns, horizon)."""
    seg = data[segment[0]: segment[1]]
    starts = np.arange(0, len(seg) - LOOKBACK - horizon + 1, stride)
    idx = starts[:, None] + np.arange(LOOKBACK + horizon)[None, :]            # (n_windows, L + H)
    block = seg[idx]                                                            # (n_windows, L + H, C)
    block = block.transpose(0, 2, 1).reshape(-1, LOOKBACK + horizon)            # (n_windows * C, L + H)
    return np.ascontiguousarray(block[:, :LOOKBACK, None]), np.ascontiguousarray(block[:, LOOKBACK:])


class LTSFMamba(nn.Module):
    """(batch, LOOKBACK, 1) -> (batch, H): last-value shift, Mamba encoder, linear head.

    head "last": Linear(d_model -> H) on the last hidden state (what the stock model's heads read);
    head "flatten": Linear(LOOKBACK * d_model -> H) on every hidden state of the window (PatchTST's head).
    """

    def __init__(self, horizon: int, config: MambaConfig, head: str = "last"):
        super().__init__()
        self.encoder = MambaModel(config, n_features=1)
        self.flatten = head == "flatten"
        self.head = nn.Linear(config.d_model * (LOOKBACK if self.flatten else 1), horizon)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = x[:, -1, :]                                                      # (batch, 1)
        h = self.encoder.encode(x - last[:, None, :])                           # (batch, LOOKBACK, d_model)
        h = h.flatten(1) if self.flatten else h[:, -1]
        return last + self.head(h)


def published(root: Path) -> dict[tuple[str, int], dict[str, tuple[float, float]]]:
    """{(dataset, horizon): {model: (mse, mae)}} from the table in SOURCES.md (empty if it cannot be read)."""
    path = root / "SOURCES.md"
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    header = next((ln for ln in lines if ln.startswith("| dataset | horizon |")), None)
    if header is None:
        return {}
    models = [c.strip() for c in header.strip("|").split("|")][2:]
    out: dict[tuple[str, int], dict[str, tuple[float, float]]] = {}
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) == len(models) + 2 and cells[0] in FILES and cells[1].isdigit():
            vals = {}
            for m, c in zip(models, cells[2:], strict=True):
                nums = re.findall(r"[0-9.]+", c)
                if len(nums) == 2:
                    vals[m] = (float(nums[0]), float(nums[1]))
            out[(cells[0], int(cells[1]))] = vals
    return out


def run_one(name: str, data: np.ndarray, segments, horizon: int, args, log) -> dict:
    t0 = time.perf_counter()
    Xtr, Ytr = windows(data, segments[0], horizon, args.train_stride)
    Xva, Yva = windows(data, segments[1], horizon, args.train_stride)
    Xte, Yte = windows(data, segments[2], horizon, args.test_stride)
    torch.manual_seed(args.seed)
    cfg = MambaConfig(d_model=args.d_model, d_state=args.d_state, num_layers=args.layers, prediction_horizons=[1])
    model = LTSFMamba(horizon, cfg, head=args.head)
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, sequence_length=LOOKBACK,
                     patience=args.patience, lr_patience=1, seed=args.seed)
    early = EarlyStopping(patience=tc.patience, min_delta=0.0, restore_best_weights=True)

    class _Log(Callback):  # one line per epoch
        def on_epoch_end(self, trainer, epoch, logs):
            log(f"  {name} H={horizon} epoch {epoch + 1}/{tc.epochs}: train {logs['train_loss']:.4f} "
                f"val {logs['val_loss']:.4f} ({logs['epoch_time']:.0f}s)")

    trainer = Trainer(model, tc, [early, ReduceLROnPlateau(factor=0.5, patience=1, min_delta=0.0), _Log()],
                      device="cpu")
    history = trainer.fit(Xtr, Ytr, Xva, Yva)
    pred = trainer.predict(Xte).numpy()
    naive = np.repeat(Xte[:, -1, :], horizon, axis=1)
    err, nerr = pred - Yte, naive - Yte
    return {"dataset": name, "horizon": horizon, "mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err))),
            "naive_mse": float(np.mean(nerr**2)), "naive_mae": float(np.mean(np.abs(nerr))),
            "train_samples": int(len(Xtr)), "test_samples": int(len(Xte)), "epochs": len(history),
            "best_epoch": early.best_epoch + 1, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DIR, help=f"folder with the CSVs (default {DEFAULT_DIR})")
    p.add_argument("--datasets", default="Exchange,ETTh1")
    p.add_argument("--horizons", default=",".join(map(str, HORIZONS)))
    p.add_argument("--full", action="store_true", help="the full protocol: train stride 1, 30 epochs, patience 3")
    p.add_argument("--train-stride", type=int, default=4, help="use every k-th training/validation window (4)")
    p.add_argument("--test-stride", type=int, default=1, help="use every k-th test window (1 = all)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--d-state", type=int, default=8)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--head", choices=["last", "flatten"], default="flatten",
                   help="linear head on the last hidden state, or on all hidden states of the window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; see docs/results.md)")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.full:
        args.train_stride, args.test_stride, args.epochs, args.patience = 1, 1, 30, 3
    if not args.data_dir.is_dir():
        print(f"LTSF benchmark skipped: {args.data_dir} does not exist (it holds exchange_rate.csv and ETTh1.csv; "
              "see SOURCES.md there). Pass --data-dir.")
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    torch.set_num_threads(args.threads)
    names = [d.strip() for d in args.datasets.split(",")]
    horizons = [int(h) for h in args.horizons.split(",")]
    pub = published(args.data_dir)
    t0 = time.perf_counter()
    results = []
    for name in names:
        if not (args.data_dir / FILES[name]).exists():
            print(f"{name}: {args.data_dir / FILES[name]} is missing; skipped")
            continue
        data, segments = load(name, args.data_dir)
        for h in horizons:
            results.append(run_one(name, data, segments, h, args, log))
            r = results[-1]
            log(f"{name} H={h}: MSE {r['mse']:.3f} MAE {r['mae']:.3f} (no-change {r['naive_mse']:.3f} / "
                f"{r['naive_mae']:.3f}) in {r['seconds']:.0f}s")
    total = time.perf_counter() - t0
    pub_models = ["DLinear", "NLinear", "MSGNet", "TimesNet", "Autoformer"]
    head = ["dataset", "H", "Mamba (ours)", "no-change", *pub_models, "train win.", "test win.", "epochs", "time"]
    rows = [head]
    for r in results:
        ref = pub.get((r["dataset"], r["horizon"]), {})
        rows.append([r["dataset"], str(r["horizon"]), f"{r['mse']:.3f} / {r['mae']:.3f}",
                     f"{r['naive_mse']:.3f} / {r['naive_mae']:.3f}",
                     *[f"{ref[m][0]:.3f} / {ref[m][1]:.3f}" if m in ref else "-" for m in pub_models],
                     str(r["train_samples"]), str(r["test_samples"]), f"{r['epochs']} (best {r['best_epoch']})",
                     f"{r['seconds']:.0f}s"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    print(f"LTSF benchmark, lookback {LOOKBACK}, MSE / MAE on the z-scored data (lower is better); torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print(f"protocol: {'FULL' if args.full else 'REDUCED'}: train/validation stride {args.train_stride}, test stride "
          f"{args.test_stride}, max {args.epochs} epochs, patience {args.patience}; model d_model {args.d_model}, "
          f"d_state {args.d_state}, {args.layers} layers, channel-independent, last-value shift, linear head on "
          f"{'all hidden states' if args.head == 'flatten' else 'the last hidden state'}")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print("published: MSGNet paper (Cai et al., AAAI 2024), Table 1, as listed in SOURCES.md; they train on every "
          "window and use the full test set")
    print(f"total {total:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                         "seconds": total}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
