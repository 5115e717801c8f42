"""How much GARCH(1,1)-t and HAR-t to pool into the network's distribution: CRPS and Brier at several weights.

Reads the forecasts of a backtest run whose model is the network alone (`--garch-weight 0 --har-weight 0`, or a
run from before the pool), the `garch_t` / `har_t` baselines of a run over the same symbols and dates, and the
per-symbol HAR-t of `benchmarks/har_symbol.py`; pools them with `mambacast.blend.pool_student_t` at each pair of
weights and prints, per horizon, the pooled CRPS ratio against GARCH-t and the pooled HAR-t (`+` significantly
better, `-` significantly worse: one-sided DM-HLN at 5% on the cross-sectional mean loss per origin date, as
the backtest pools) and the strikes (S_0 (1 + m), m in -10..+10%) where the Brier score of P(S_T > K) is
significantly worse than GARCH-t's. This is how the served weights (1/3, 1/3) were chosen, on 2004-2009 only:

    mambacast backtest --symbols $S --start 2004-01-01 --end 2009-12-31 --report out/tune-pre2010-v2
    mambacast backtest --symbols $S --start 2004-01-01 --end 2009-12-31 --no-model \\
        --baselines garch_t,har_t --report out/tune-garch-v3
    python benchmarks/har_symbol.py --symbols $S --start 2004-01-01 --end 2009-12-31 --report out/har-pre2010
    python benchmarks/pool_weights.py out/tune-pre2010-v2 out/tune-garch-v3 out/har-pre2010 --model mamba
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy import stats

from mambacast.blend import pool_student_t
from mambacast.evaluate.desk import MONEYNESS
from mambacast.evaluate.metrics import diebold_mariano
from mambacast.train.objective import crps_student_t_np

KEY = ["symbol", "origin", "horizon"]


def _load(run: str, names: list[str]) -> list[pd.DataFrame]:
    f = pd.read_csv(f"{run}/forecasts.csv.gz", usecols=[*KEY, "forecaster", "realised", "mean", "scale", "df"])
    f = f[f.forecaster.isin(names) & f.realised.notna()].copy()
    f["df"] = f["df"].fillna(np.inf)                   # a refused GARCH fit is Gaussian
    return [f[f.forecaster == n].set_index(KEY) for n in names]


def _dm(a: np.ndarray, b: np.ndarray, origins: np.ndarray, h: int) -> str:
    """Ratio of the mean losses with '+' (a significantly lower) or '-' (significantly higher)."""
    a_t, b_t = pd.Series(a).groupby(origins).mean(), pd.Series(b).groupby(origins).mean()
    _, p_better = diebold_mariano(a_t.to_numpy(), b_t.to_numpy(), h=h, alternative="less")
    _, p_worse = diebold_mariano(a_t.to_numpy(), b_t.to_numpy(), h=h, alternative="greater")
    return f"{a_t.mean() / b_t.mean():.4f}{'+' if p_better <= 0.05 else '-' if p_worse <= 0.05 else ' '}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_run", help="report folder whose model forecaster is the network alone")
    ap.add_argument("baseline_run", help="report folder with garch_t and har_t over the same symbols and dates")
    ap.add_argument("har_run", help="report folder of benchmarks/har_symbol.py over the same symbols and dates")
    ap.add_argument("--model", default="mamba", help="the model forecaster's name in model_run (e.g. mamba_s42)")
    ap.add_argument("--weights", default="0:0,0.5:0,0:0.5,0.25:0.25,0.333:0.333,0.5:0.25,0.25:0.5",
                    help="GARCH:HAR weight pairs, comma-separated (the network gets the rest)")
    args = ap.parse_args()
    (net,) = _load(args.model_run, [args.model])
    garch, har = _load(args.baseline_run, ["garch_t", "har_t"])
    (solo,) = _load(args.har_run, ["har_symbol"])
    common = net.index.intersection(garch.index).intersection(har.index).intersection(solo.index)
    net, garch, har, solo = (f.loc[common] for f in (net, garch, har, solo))
    horizons = net.index.get_level_values("horizon").to_numpy()
    origins = net.index.get_level_values("origin").to_numpy()
    pairs = [tuple(float(x) for x in w.split(":")) for w in args.weights.split(",")]
    for w_g, w_h in pairs:
        line, worse = [f"garch {w_g:<5g} har {w_h:<5g}"], []
        for h in sorted(set(horizons)):
            sel = horizons == h
            y, o = net["realised"].to_numpy()[sel], origins[sel]
            col = {n: [f[c].to_numpy()[sel] for c in ("mean", "scale", "df")] for n, f in
                   (("net", net), ("garch", garch), ("har", har), ("solo", solo))}
            loc, scale = pool_student_t(*col["net"], [(w_g, *col["garch"]), (w_h, *col["solo"])])
            df = col["net"][2]
            crps = crps_student_t_np(y, loc, scale, df)
            line.append(f"{h}d vs garch_t {_dm(crps, crps_student_t_np(y, *col['garch']), o, int(h))} "
                        f"har_t {_dm(crps, crps_student_t_np(y, *col['har']), o, int(h))}")
            for m in MONEYNESS:
                x, event = np.log1p(m), (y > np.log1p(m)).astype(np.float64)
                p = stats.t.sf((x - loc) / scale, df)
                g_loc, g_scale, g_df = col["garch"]
                p_g = stats.t.sf((x - g_loc) / g_scale, g_df)
                verdict = _dm((p - event) ** 2, (p_g - event) ** 2, o, int(h))
                if verdict.endswith("-"):
                    worse.append(f"{h}d {m:+.0%}: {verdict[:-1]}")
        print(" | ".join(line), "| Brier worse than garch_t:", ", ".join(worse) or "nowhere", flush=True)


if __name__ == "__main__":
    main()
