"""How much GARCH(1,1)-t to pool into the network's distribution: CRPS of the pool at several weights.

Reads the forecasts of a backtest run whose model is the network alone (`--garch-weight 0`, or a run from
before the pool) and the `garch_t` / `har_t` forecasts of a run over the same symbols and dates, pools them
with `mambacast.blend.blend_student_t` at each weight, and prints the pooled CRPS ratio against GARCH-t and
HAR-t with the one-sided DM-HLN p-values (cross-sectional mean loss per origin date, as the backtest pools).
This is how the served weight (1/2) was chosen, on 2004-2009 only:

    mambacast backtest --symbols $S --start 2004-01-01 --end 2009-12-31 --report out/tune-pre2010-v2
    mambacast backtest --symbols $S --start 2004-01-01 --end 2009-12-31 --no-model \\
        --baselines garch_t,har_t --report out/tune-garch-v3
    python benchmarks/pool_weights.py out/tune-pre2010-v2 out/tune-garch-v3 --model mamba
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from mambacast.blend import blend_student_t
from mambacast.evaluate.metrics import diebold_mariano
from mambacast.train.objective import crps_student_t_np

KEY = ["symbol", "origin", "horizon"]


def _crps(frame: pd.DataFrame, loc=None, scale=None) -> pd.Series:
    loc = frame["mean"].to_numpy() if loc is None else loc
    scale = frame["scale"].to_numpy() if scale is None else scale
    return pd.Series(crps_student_t_np(frame["realised"].to_numpy(), loc, scale, frame["df"].to_numpy()),
                     index=frame.index)


def _dm(a: pd.Series, b: pd.Series, h: int) -> str:
    a, b = a.groupby(level="origin").mean().sort_index(), b.groupby(level="origin").mean().sort_index()
    _, p_better = diebold_mariano(a.to_numpy(), b.to_numpy(), h=h, alternative="less")
    _, p_worse = diebold_mariano(a.to_numpy(), b.to_numpy(), h=h, alternative="greater")
    return f"{a.mean() / b.mean():.4f} (p_better {p_better:.3f}, p_worse {p_worse:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_run", help="report folder whose model forecaster is the network alone")
    ap.add_argument("baseline_run", help="report folder with garch_t and har_t over the same symbols and dates")
    ap.add_argument("--model", default="mamba", help="the model forecaster's name in model_run (e.g. mamba_s42)")
    ap.add_argument("--weights", default="0,0.3,0.5,0.7,1")
    args = ap.parse_args()
    m = pd.read_csv(f"{args.model_run}/forecasts.csv.gz")
    b = pd.read_csv(f"{args.baseline_run}/forecasts.csv.gz")
    frame = pd.concat([m[m.forecaster == args.model], b[b.forecaster.isin(["garch_t", "har_t"])]])
    frame = frame[frame.realised.notna()].copy()
    frame["df"] = frame["df"].fillna(np.inf)       # a refused GARCH fit is Gaussian
    net, garch, har = (frame[frame.forecaster == n].set_index(KEY) for n in (args.model, "garch_t", "har_t"))
    common = net.index.intersection(garch.index).intersection(har.index)
    net, garch, har = net.loc[common], garch.loc[common], har.loc[common]
    horizons = net.index.get_level_values("horizon")
    for h in sorted(horizons.unique()):
        sel = horizons == h
        n, g, r = net[sel], garch[sel], har[sel]
        loss_g, loss_h = _crps(g), _crps(r)
        pairs = (("loc", n["mean"]), ("scale", n["scale"]), ("df", n["df"]), ("g_loc", g["mean"]),
                 ("g_scale", g["scale"]), ("g_df", g["df"]))
        col = {k: v.to_numpy()[:, None] for k, v in pairs}
        for w in (float(x) for x in args.weights.split(",")):
            loc, scale = blend_student_t(**col, weight=w)           # one column: every row its own law
            loss = _crps(n, loc[:, 0], scale[:, 0])
            print(f"{h:>3}d  w={w:<4g} vs garch_t {_dm(loss, loss_g, int(h))}  vs har_t {_dm(loss, loss_h, int(h))}")


if __name__ == "__main__":
    main()
