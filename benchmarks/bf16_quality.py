"""Does bf16 training on the CPU stay within float32's seed noise? (issue 17: bf16 matmuls are kept "only if
the validation loss of a 50-epoch run stays within noise of fp32").

Run: .venv/bin/python benchmarks/bf16_quality.py [--symbols 6] [--seeds 42,43,44,45] [--epochs 50] [--days 1000]
     .venv/bin/python benchmarks/bf16_quality.py --report out/bf16_quality.json     (the table again, no training)

Trains the first `--symbols` bundled stocks (as bench_stacked.py picks them) at the guide's config for
`--epochs` epochs with early stopping and the learning-rate schedule off (patience larger than the run),
once per seed in float32 and once under bfloat16 autocast (`MAMBACAST_CPU_BF16=1`: the Linear layers as
oneDNN bf16 matmuls with fp32 accumulation and fp32 master weights, the fused block's x_proj too, the residual
stream bf16; its conv, scan and dt_proj, the norms' arithmetic and the loss in fp32). The symbols of one seed
and precision train as one stack (`train_symbols(stack=True)`, which stores what training each alone stores).
The two precisions run side by side, one process of one thread each: this measures quality, not time. Every
epoch's validation metrics come from the progress events and are written to `--out` (JSON).

Per symbol and metric the table gives float32's and bf16's mean over the seeds, float32's seed standard
deviation (the noise), the difference of the means in units of its standard error (SE = the pooled seed
standard deviation x sqrt(2 / seeds)), Welch's two-sided p, and in how many seeds bf16's figure is the lower of
the pair (same seed, same initial weights). The metrics:
  - val NLL, last 10 epochs: the mean validation loss (Student-t NLL) over the run's last 10 epochs, the
    issue's "validation loss of a 50-epoch run";
  - val NLL, epoch 1;
  - best val CRPS: the lowest validation CRPS over the untrained baseline (epoch 0) and every epoch, what the
    stored checkpoint scores (checkpoints keep the best val CRPS), with the epoch it came from.
Verdict per metric: "within noise" when no symbol's difference exceeds 2 SE, else the symbols where it does
and in which direction. Validation runs under the same autocast as training (as the Trainer evaluates).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "bf16")


def train_all(symbols: list[str], seeds: list[int], epochs: int, days: int) -> dict[str, Any]:
    """{seed: {symbol: {"baseline": logs, "epochs": [logs per epoch]}}} for this process's precision."""
    from mambacast import MambaConfig, TrainConfig
    from mambacast.train.pipeline import train_symbols

    runs: dict[str, Any] = {}
    for seed in seeds:
        logs: dict[str, dict[str, Any]] = {s: {"baseline": None, "epochs": []} for s in symbols}

        def progress(event: str, symbol: str, data: dict[str, Any], logs=logs) -> None:
            if event == "baseline":
                logs[symbol]["baseline"] = data
            elif event == "epoch":
                logs[symbol]["epochs"].append(data)

        cfg = TrainConfig(epochs=epochs, patience=epochs + 1, lr_patience=epochs + 1, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            results = train_symbols(symbols, stack=True, progress=progress, model_config=MambaConfig(),
                                    train_config=cfg, days=days, save_dir=tmp)
        failed = [r["symbol"] for r in results if r["status"] != "ok"]
        if failed:
            raise SystemExit(f"training failed for {failed}")
        runs[str(seed)] = logs
        print(f"  {os.environ.get('MAMBACAST_CPU_BF16') == '1' and 'bf16' or 'fp32'} seed {seed} done", flush=True)
    return runs


def metrics(run: dict[str, Any]) -> dict[str, float]:
    """One symbol's run -> the compared figures."""
    val = [e["val_loss"] for e in run["epochs"]]
    crps = [run["baseline"]["val_crps"]] + [e["val_crps"] for e in run["epochs"]]
    best = min(range(len(crps)), key=crps.__getitem__)
    return {"val NLL, last 10 epochs": statistics.fmean(val[-10:]), "val NLL, epoch 1": val[0],
            "best val CRPS": crps[best], "best epoch": float(best)}


def report(data: dict[str, Any]) -> None:
    from scipy.stats import ttest_ind

    symbols, seeds = data["symbols"], data["seeds"]
    table = {p: {sym: [metrics(data[p][str(seed)][sym]) for seed in seeds] for sym in symbols} for p in PRECISIONS}
    print(f"{len(symbols)} symbols x {len(seeds)} seeds (seeds {','.join(map(str, seeds))}), {data['epochs']} "
          f"epochs, {data['days']} days, early stopping and LR schedule off")
    for name in ("val NLL, last 10 epochs", "val NLL, epoch 1", "best val CRPS"):
        print(f"\n{name}")
        print(f"  {'symbol':<7} {'fp32 mean':>10} {'bf16 mean':>10} {'fp32 sd':>9} {'diff':>9} {'diff/SE':>8} "
              f"{'p':>6} {'bf16 lower':>10}" + ("   best epoch fp32 / bf16" if name == "best val CRPS" else ""))
        beyond = []
        for sym in symbols:
            a = [m[name] for m in table["fp32"][sym]]
            b = [m[name] for m in table["bf16"][sym]]
            sd = statistics.stdev(a) if len(a) > 1 else float("nan")
            pooled = ((statistics.variance(a) + statistics.variance(b)) / 2) ** 0.5 if len(a) > 1 else float("nan")
            diff = statistics.fmean(b) - statistics.fmean(a)
            se = pooled * (2 / len(seeds)) ** 0.5
            z = diff / se if se > 0 else 0.0 if diff == 0 else float("inf")
            p = ttest_ind(b, a, equal_var=False).pvalue if se > 0 else 1.0 if diff == 0 else 0.0
            if abs(z) > 2:
                beyond.append(f"{sym} ({'bf16 higher' if diff > 0 else 'bf16 lower'})")
            extra = ""
            if name == "best val CRPS":
                extra = ("   " + ",".join(str(int(m["best epoch"])) for m in table["fp32"][sym]) + " / "
                         + ",".join(str(int(m["best epoch"])) for m in table["bf16"][sym]))
            print(f"  {sym:<7} {statistics.fmean(a):10.5f} {statistics.fmean(b):10.5f} {sd:9.5f} {diff:+9.5f} "
                  f"{z:+8.2f} {p:6.3f} {sum(y < x for x, y in zip(a, b, strict=True)):>4} of {len(a)}{extra}")
        verdict = "within noise (no symbol beyond 2 SE)" if not beyond else "beyond 2 SE: " + ", ".join(beyond)
        print(f"  verdict: {verdict}")
        print(f"SUMMARY {name}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=6)
    parser.add_argument("--seeds", default="42,43,44,45")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--days", type=int, default=1000)
    parser.add_argument("--out", default="out/bf16_quality.json", help="where the per-epoch metrics go (JSON)")
    parser.add_argument("--report", metavar="JSON", help="print the table of an earlier run's JSON, no training")
    parser.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)   # a worker process's half
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.precision:
        from bench_stacked import pick_symbols  # benchmarks/ is on sys.path when this script runs

        symbols = pick_symbols(args.symbols, args.days)
        runs = train_all(symbols, seeds, args.epochs, args.days)
        Path(args.out).write_text(json.dumps({"symbols": symbols, "runs": runs}))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    procs = {}
    for p in PRECISIONS:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MAMBACAST_CPU_BF16": "1" if p == "bf16" else "0"}
        part = out.with_suffix(f".{p}.json")
        procs[p] = (part, subprocess.Popen([sys.executable, __file__, "--precision", p, "--symbols", str(args.symbols),
                                            "--seeds", args.seeds, "--epochs", str(args.epochs), "--days",
                                            str(args.days), "--out", str(part)], env=env))
    for p, (_, proc) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"the {p} half failed (exit {proc.returncode})")
    halves = {p: json.loads(part.read_text()) for p, (part, _) in procs.items()}
    data = {"symbols": halves["fp32"]["symbols"], "seeds": seeds, "epochs": args.epochs, "days": args.days,
            **{p: halves[p]["runs"] for p in PRECISIONS}}
    out.write_text(json.dumps(data))
    for part, _ in procs.values():
        part.unlink()
    report(data)


if __name__ == "__main__":
    main()
