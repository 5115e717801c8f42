"""Profile forecast requests end to end in one thread: HTTP app, validation, features, forward pass, pool, JSON.

Builds the service's ASGI app over `--save-dir` (default: a default-preset AAPL and MSFT trained for one epoch
into a temporary folder, as `bench_serve.py` does), runs the predictor's work inline on the event loop's thread
(instead of its worker threads, so that one cProfile sees all of it), and sends `--requests` forecast requests
with the body `bench_serve.py` sends: 1,000 closes, no two alike (every request a full forecast). Prints the
time per request without and with the profiler, the cumulative time of each step and the top functions.

    python benchmarks/profile_serve.py [--save-dir DIR] [--requests 300] [--top 30] [--log] [--dump FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_serve import Bodies, model_store

from mambacast.predict import MambaPredictor
from mambacast.serve.app import create_app

# Where a request's CPU goes: cumulative time of these functions (file fragment, function name). A coroutine's
# cumulative time counts only while it runs, so the HTTP row excludes the forecast it awaits.
PHASES = (("HTTP: ASGI app, JSON, validation, response", "profile_serve.py", "_post"),
          ("forecast (predictor, the rows below and more)", "mambacast/predict.py", "_forecast_group"),
          ("  checks, features, scaled window", "mambacast/predict.py", "_prepare"),
          ("    features (extract_features)", "mambacast/data/features.py", "extract_features"),
          ("  forward pass", "mambacast/predict.py", "_infer"),
          ("  GARCH-t / HAR-t pool", "mambacast/blend.py", "apply"),
          ("  quantiles and result", "mambacast/forecasts.py", "prediction_result"))


async def _inline_run(self: MambaPredictor, fn: Any, *args: Any) -> Any:
    """`MambaPredictor._run` without the thread pool: the work runs where cProfile is watching."""
    return fn(*args)


async def _post(app: Any, path: str, body: bytes) -> int:
    """One request straight into the ASGI app (no socket, no client library); returns the status."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent = False
    status = [0]

    async def receive() -> dict:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    await app(scope, receive, send)
    return status[0]


async def _drive(app: Any, bodies: list[bytes], unprofiled: list[bytes], profiler: cProfile.Profile
                 ) -> tuple[float, float]:
    """Seconds for `unprofiled` requests without the profiler, then for `bodies` under it."""
    walls = []
    async with app.router.lifespan_context(app):
        for body in unprofiled[:20]:                   # warm-up: model load, first-call costs
            assert await _post(app, "/v1/forecast", body) == 200
        for batch, prof in ((unprofiled[20:], None), (bodies, profiler)):
            t0 = time.perf_counter()
            if prof is not None:
                prof.enable()
            for body in batch:
                status = await _post(app, "/v1/forecast", body)
                if status != 200:
                    raise RuntimeError(f"status {status}")
            if prof is not None:
                prof.disable()
            walls.append(time.perf_counter() - t0)
    return walls[0], walls[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save-dir", help="model store (default: train default-preset AAPL, MSFT for one epoch)")
    ap.add_argument("--requests", type=int, default=300, help="profiled requests (default 300)")
    ap.add_argument("--top", type=int, default=30, help="functions listed (default 30)")
    ap.add_argument("--log", action="store_true", help="with the forecast log on (its writer thread is not profiled)")
    ap.add_argument("--dump", help="also write the pstats file here (for snakeviz, pstats)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="profile-serve-"))
    save_dir = model_store(args.save_dir, tmp)
    MambaPredictor._run = _inline_run                  # type: ignore[method-assign]
    torch.set_num_threads(1)                           # as the service's inference threads (inference_threads=1)
    app = create_app(save_dir, log_path=tmp / "forecasts.sqlite" if args.log else None, reload_interval_s=0,
                     max_workers=1)
    make = Bodies().make
    unprofiled, bodies = make(args.requests + 20, sent=True), make(args.requests, sent=True)
    profiler = cProfile.Profile()
    plain, wall = asyncio.run(_drive(app, bodies, unprofiled, profiler))
    stats = pstats.Stats(profiler)
    if args.dump:
        stats.dump_stats(args.dump)
    n = args.requests
    print(f"without the profiler: {1000 * plain / n:.2f} ms per request (one thread, no HTTP client or socket); "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"under the profiler: {1000 * wall / n:.2f} ms per request; cumulative ms per request:")
    for label, fragment, name in PHASES:
        cum = sum(v[3] for (filename, _, func), v in stats.stats.items()  # type: ignore[attr-defined]
                  if fragment in filename and func == name)
        print(f"  {label:<50} {1000 * cum / n:6.2f}")
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
