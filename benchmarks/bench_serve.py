"""Load benchmark of `mambacast serve` on the loopback interface (bounded in requests and time).

Starts `mambacast serve` as a separate process on 127.0.0.1 and a free port, over `--save-dir` (default:
a default-preset AAPL and MSFT trained for one epoch into a temporary folder), and measures with an
httpx client in this process:

1. one client in sequence: p50/p99 latency of a single-symbol forecast (target p50 <= 15 ms);
2. 32 concurrent clients: throughput, p99 and errors (targets >= 300 req/s, p99 <= 250 ms, 0 errors);
3. a burst of 1,000 requests opened at once: errors (target 0);
4. a 50-strike x 4-horizon options chain, one client: p50 (target <= 50 ms).

Each is run with the service's own prices ("source": what a platform asking "AAPL now" sends; repeated
requests share one answer until the prices or the model change) and with distinct client-sent histories
(1,000 closes each, no two alike: every request is a full forecast). Client and server share the machine's
cores; the client is a minimal HTTP/1.1 one (`Connection`) so that it takes little of them. Usage:

    python benchmarks/bench_serve.py [--save-dir DIR] [--workers 1] [--requests 300] [--max-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from mambacast.data.sources import load_prices


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_store(save_dir: str | None, tmp: Path) -> Path:
    """`--save-dir`, or a store in `tmp` with default-preset AAPL and MSFT trained for one epoch."""
    if save_dir:
        return Path(save_dir)
    from mambacast import TrainConfig, preset
    from mambacast.train import train_symbol

    root = tmp / "models"
    print("training default-preset AAPL, MSFT (1 epoch) ...", flush=True)
    model_config, _ = preset("default")
    for symbol in ("AAPL", "MSFT"):
        train_symbol(symbol, model_config=model_config, train_config=TrainConfig(epochs=1), days=2000, save_dir=root)
    return root


def _start(save_dir: Path, log: Path | None, workers: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "mambacast.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--save-dir", str(save_dir), "--workers", str(workers)]
                            + (["--log", str(log)] if log is not None else ["--no-log"])
                            + (["--threads", "1"] if workers > 1 else []), env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError("the server was not ready within 120 s")


class Bodies:
    """Encoded request bodies: the service's own AAPL prices, or distinct 1,000-close histories (one per request).

    Bodies are made before the clock starts, so the client's JSON encoding is not timed.
    """

    def __init__(self) -> None:
        self.closes = load_prices("AAPL", days=2000)["close"].to_numpy()
        self.n = 0

    def _body(self, sent: bool, strikes: bool) -> bytes:
        body: dict = {"symbol": "AAPL"}
        if sent:
            self.n += 1
            end = len(self.closes) - (self.n % 900)
            body["prices"] = (self.closes[end - 1000:end] * (1 + 1e-7 * self.n)).tolist()   # no two alike
        if strikes:
            body["strikes"] = list(np.round(np.linspace(0.75, 1.25, 50) * float(self.closes[-1]), 2))
        return json.dumps(body).encode()

    def make(self, n: int, sent: bool, strikes: bool = False) -> list[bytes]:
        return [self._body(sent, strikes) for _ in range(n)]


class Connection:
    """A minimal HTTP/1.1 keep-alive client on one connection.

    httpx spends about 2.5 ms of CPU per request, more than the server (about 1 ms for an answer it has
    already computed): on two cores shared with the server it would measure the client. Like `wrk`, this
    writes the request and reads the status line, headers and Content-Length body, nothing more.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[float, bool]:
        t0 = time.perf_counter()
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await self.reader.readexactly(length)
            ok = head[9:12] == b"200"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, AttributeError):
            ok = False
            await self.close()
        return time.perf_counter() - t0, ok

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def _stats(results: list[tuple[float, bool]], wall: float) -> dict:
    a = np.array([dt for dt, _ in results]) * 1000
    return {"n": len(a), "req_per_s": len(a) / wall, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "errors": sum(not ok for _, ok in results), "wall_s": wall}


async def sequential(port: int, path: str, bodies: list[bytes], limit_s: float) -> dict:
    conn = Connection("127.0.0.1", port)
    await conn.post(path, bodies[0])                             # connection set-up, first answer
    results, deadline, t0 = [], time.monotonic() + limit_s, time.perf_counter()
    for body in bodies:
        results.append(await conn.post(path, body))
        if time.monotonic() > deadline:
            break
    wall = time.perf_counter() - t0
    await conn.close()
    return _stats(results, wall)


async def concurrent(port: int, path: str, bodies: list[bytes], clients: int, limit_s: float) -> dict:
    """`clients` connections, each sending its share of `bodies` one after another."""
    results: list[tuple[float, bool]] = []
    deadline = time.monotonic() + limit_s

    async def client(share: list[bytes]) -> None:
        conn = Connection("127.0.0.1", port)
        for body in share:
            if time.monotonic() > deadline:
                break
            results.append(await conn.post(path, body))
        await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(bodies[i::clients]) for i in range(clients)))
    return _stats(results, time.perf_counter() - t0)


async def burst(port: int, bodies: list[bytes]) -> dict:
    """Every body at once, each on its own new connection: how many fail."""
    conns = [Connection("127.0.0.1", port) for _ in bodies]
    t0 = time.perf_counter()
    results = await asyncio.gather(*(c.post("/v1/forecast", b) for c, b in zip(conns, bodies, strict=True)))
    wall = time.perf_counter() - t0
    await asyncio.gather(*(c.close() for c in conns))
    return _stats(list(results), wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save-dir", help="model store (default: train default-preset AAPL, MSFT for one epoch)")
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per measurement (default 300)")
    ap.add_argument("--workers", type=int, default=1, help="server processes (mambacast serve --workers)")
    ap.add_argument("--per-client", type=int, default=40, help="requests per client of the 32 (default 40)")
    ap.add_argument("--no-log", action="store_true",
                    help="serve without the forecast log, to see what monitoring costs (run both in one session)")
    ap.add_argument("--max-seconds", type=float, default=60, help="time limit per measurement (default 60)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    save_dir = model_store(args.save_dir, tmp)
    print(f"load average before: {os.getloadavg()[0]:.2f}; cpus: {os.cpu_count()}", flush=True)
    proc, url = _start(save_dir, None if args.no_log else tmp / "forecasts.sqlite", args.workers)
    port = int(url.rsplit(":", 1)[1])
    bodies = Bodies()
    rows = []
    try:
        for sent, label in ((False, "source prices"), (True, "sent histories")):
            seq = asyncio.run(sequential(port, "/v1/forecast", bodies.make(args.requests, sent), args.max_seconds))
            rows.append((f"1 client, forecast ({label})", f"p50 {seq['p50_ms']:.1f} ms, p99 {seq['p99_ms']:.1f} ms, "
                         f"{seq['n']} requests, {seq['errors']} errors", "p50 <= 15 ms", seq["p50_ms"] <= 15))
            con = asyncio.run(concurrent(port, "/v1/forecast", bodies.make(32 * args.per_client, sent), 32,
                                         args.max_seconds))
            rows.append((f"32 clients, forecast ({label})",
                         f"{con['req_per_s']:.0f} req/s, p50 {con['p50_ms']:.0f} ms, p99 {con['p99_ms']:.0f} ms, "
                         f"{con['n']} requests, {con['errors']} errors", ">= 300 req/s, p99 <= 250 ms, 0 errors",
                         con["req_per_s"] >= 300 and con["p99_ms"] <= 250 and con["errors"] == 0))
            bur = asyncio.run(burst(port, bodies.make(1000, sent)))
            rows.append((f"burst of 1,000 ({label})", f"{bur['errors']} errors, all answered in {bur['wall_s']:.1f} s",
                         "0 errors", bur["errors"] == 0))
            ch = asyncio.run(sequential(port, "/v1/probabilities", bodies.make(min(args.requests, 200), sent, True),
                                        args.max_seconds))
            rows.append((f"50 strikes x 4 horizons ({label})", f"p50 {ch['p50_ms']:.1f} ms, p99 {ch['p99_ms']:.1f} ms",
                         "p50 <= 50 ms", ch["p50_ms"] <= 50))
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    width = max(len(r[0]) for r in rows)
    for name, got, target, met in rows:
        print(f"{name:<{width}}  {got:<70}  {target:<40}  {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
