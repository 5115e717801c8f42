"""What the network adds: the backtest of the model with its network left untrained, beside GARCH-t and HAR-t.

The untrained model is the volatility baseline the network starts from (a fixed-parameter GARCH(1,1) with
the pooled training drift, a maximum-likelihood Student-t tail and the validation calibration factor,
docs/model.md). This script runs the backtest's global-model protocol with that model, alone
(`untrained`) and pooled with the stock's GARCH(1,1)-t and HAR-t as the served law is (`untrained_pool`), and writes
the usual report folder. Compare its forecasts.csv.gz with a `mambacast backtest --seeds ...` run over the
same symbols and dates (`--compare DIR`) to see whether the trained network beats its own starting point.

    python benchmarks/ablation_network.py --symbols AAPL,...,XOM --start 2010-01-01 --report out/ablation \\
        --compare out/backtest-pool3
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from mambacast.config import MambaConfig, TrainConfig
from mambacast.data.sources import load_prices
from mambacast.data.universe import parse_symbols
from mambacast.evaluate.backtest import BacktestConfig, dated_panel, make_baselines, run_backtest
from mambacast.evaluate.har import HarPool
from mambacast.evaluate.metrics import diebold_mariano
from mambacast.evaluate.model import POOLED_DAYS, POOLED_STRIDE, GlobalMambaForecaster
from mambacast.evaluate.panel import CutoffCache
from mambacast.nn.mamba import MambaModel
from mambacast.report import write_backtest_report
from mambacast.train.distribution import calibrate_distribution, configure_baseline, fit_baseline_tail
from mambacast.train.objective import crps_student_t_np
from mambacast.train.pooled import prepare_pooled


class UntrainedGlobal(GlobalMambaForecaster):
    """The global model with its network left at initialisation (its corrections are exactly zero)."""

    def _train(self, feature_names, feature_scaler, target_scaler, warmup, X_train, y_train, X_val, y_val):
        model = MambaModel(self.model_config, len(feature_names))
        configure_baseline(model, feature_names, feature_scaler, target_scaler)
        fit_baseline_tail(model, X_train, y_train)
        model.eval()
        self.calibration_ = np.asarray(calibrate_distribution(model, X_val, y_val)["scale_factor"])
        self.model_, self.feature_scaler_, self.target_scaler_, self.warmup_ = (model, feature_scaler,
                                                                                target_scaler, warmup)
        self.fit_info_ = {"epochs": 0, "best_monitored": float("nan"), "calibration": self.calibration_.tolist()}


def factory(prices, mc: MambaConfig, tc: TrainConfig):
    panel = dated_panel(prices)

    def build(cutoff: pd.Timestamp) -> UntrainedGlobal:
        data = prepare_pooled(panel.until(cutoff), mc, tc, max_days=POOLED_DAYS, train_stride=POOLED_STRIDE)
        return UntrainedGlobal(cache, mc, tc, symbol="GLOBAL").fit_pooled(data)

    cache: CutoffCache[UntrainedGlobal] = CutoffCache(build)
    pool = HarPool(panel)
    alone_tc = replace(tc, garch_weight=0.0, har_weight=0.0)

    def make(symbol: str):
        alone = UntrainedGlobal(cache, mc, alone_tc, symbol=symbol)
        alone.name = "untrained"
        pooled = UntrainedGlobal(cache, mc, tc, symbol=symbol)
        pooled.name = "untrained_pool"
        return [pooled, alone, *make_baselines(["garch_t", "har_t"], pool, symbol)]

    return make


def compare(ours: str, theirs: str) -> None:
    """Pooled CRPS ratio and one-sided DM of each model in `theirs` vs `untrained_pool` (same origins)."""
    a, b = pd.read_csv(f"{ours}/forecasts.csv.gz"), pd.read_csv(f"{theirs}/forecasts.csv.gz")
    frame = pd.concat([a[a.forecaster == "untrained_pool"], b[b.forecaster.str.startswith("mamba")]])
    frame = frame[frame.realised.notna()]
    frame["crps"] = crps_student_t_np(frame.realised.to_numpy(), frame["mean"].to_numpy(), frame.scale.to_numpy(),
                                      frame.df.to_numpy())
    table = frame.pivot_table(index=["horizon", "origin", "symbol"], columns="forecaster", values="crps").dropna()
    for h, block in table.groupby(level="horizon"):
        daily = block.groupby(level="origin").mean()
        ref = daily["untrained_pool"].to_numpy()
        for name in [c for c in daily.columns if c != "untrained_pool"]:
            x = daily[name].to_numpy()
            _, p_better = diebold_mariano(x, ref, h=int(h), alternative="less")
            _, p_worse = diebold_mariano(x, ref, h=int(h), alternative="greater")
            print(f"{h:>3}d  {name:<12} / untrained_pool  CRPS ratio {x.mean() / ref.mean():.4f}  "
                  f"p_better {p_better:.3f}  p_worse {p_worse:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", required=True)
    ap.add_argument("--start", default="2010-01-01")
    ap.add_argument("--end")
    ap.add_argument("--report", default="out/ablation")
    ap.add_argument("--compare", help="a mambacast backtest report folder over the same symbols and dates")
    args = ap.parse_args()
    torch.set_num_threads(1)
    mc, tc = MambaConfig.small(), TrainConfig.small(batch_size=256)
    prices = {s: load_prices(s, days=None) for s in parse_symbols(args.symbols)}
    config = BacktestConfig(reference="untrained_pool", references=())
    t0 = time.perf_counter()
    result = run_backtest(prices, factory(prices, mc, tc), config, start=args.start, end=args.end)
    write_backtest_report(result, args.report, command="python benchmarks/ablation_network.py " +
                          " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None))
    print(f"backtest {time.perf_counter() - t0:.0f}s; report in {args.report}")
    pooled = result.metrics[result.metrics.symbol == "ALL"][["forecaster", "horizon", "ret_crps"]]
    print(pooled.pivot(index="forecaster", columns="horizon", values="ret_crps").to_string(float_format="%.6f"))
    if args.compare:
        compare(args.report, args.compare)


if __name__ == "__main__":
    main()
