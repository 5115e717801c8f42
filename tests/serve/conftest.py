"""Fixtures of the service tests: a tiny trained model store and a real uvicorn server on a loopback port."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")
pytest.importorskip("httpx", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from mambacast import MambaConfig, TrainConfig  # noqa: E402
from mambacast.serve.app import create_app  # noqa: E402
from mambacast.store import ModelStore  # noqa: E402
from mambacast.train import train_symbol  # noqa: E402
from mambacast.versions import ModelVersions  # noqa: E402

TINY = MambaConfig(d_model=16, d_state=4, num_layers=1)
STARTUP_TIMEOUT_S = 60.0


def _train(root: Path, seed: int) -> None:
    train_symbol("AAPL", model_config=TINY, train_config=TrainConfig(epochs=1, batch_size=64, seed=seed), days=400,
                 save_dir=root)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """AAPL trained twice (seeds 1 and 2): two versions, the second current. Read-only for tests: copy to change."""
    root = tmp_path_factory.mktemp("serve-models")
    _train(root, seed=1)
    # A version is named by its training time to the second and listed in name order: two runs in the same second
    # (the tiny model trains in under one) would be ordered by their weights hash, not oldest first.
    time.sleep(1.0 - time.time() % 1.0)
    _train(root, seed=2)
    assert len(ModelVersions(ModelStore(root)).list("AAPL")) == 2
    return root


@pytest.fixture
def store_copy(model_store, tmp_path) -> Path:
    """A private copy of the model store that a test may promote, roll back or break."""
    return Path(shutil.copytree(model_store, tmp_path / "models"))


class LiveServer:
    """uvicorn serving an app in a thread on 127.0.0.1 and a free port chosen by the kernel."""

    def __init__(self, app):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the test server exited during start-up")
            if time.monotonic() > deadline:
                self.server.should_exit = True
                raise TimeoutError(f"the test server did not start within {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_store) -> Iterator[LiveServer]:
    """The service over the shared store (no reloads), logging to a module-private SQLite file."""
    log_path = tmp_path_factory.mktemp("serve-log") / "forecasts.sqlite"
    with LiveServer(create_app(model_store, log_path=log_path, reload_interval_s=0)) as live:
        yield live


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c
