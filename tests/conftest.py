"""Suite-wide: tests marked `cuda` need a CUDA GPU and skip, saying so, on machines without one; `ray_cluster`
is a real local Ray cluster (2 CPUs) for one test module. Without a GPU the Triton kernels' tests run under
Triton's interpreter (tests/nn/triton_env.py), which Triton reads when it is first imported, and importing
mambacast imports it (through torch's compiler): so it is switched on here, before any test module loads."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def float32_training():
    """Training in float32 whatever the CPU, for one test (`MAMBACAST_CPU_BF16=0`, which the CLI's, the worker
    pool's and Ray's processes inherit). For tests that compare two ways of training the same models to 1e-6 or
    bit for bit: bf16 autocast, the default on CPUs with bfloat16 in hardware, rounds the Linear layers' inputs to
    8 bits of mantissa, so summing in another order (a batched matmul, one thread instead of two) flips roundings
    that training grows to 1e-3-1e-2 in the weights within five epochs (measured on the stacked test's models).
    The bf16 paths have tests of their own (tests/train/test_stacked.py, tests/nn/test_autocast.py)."""
    yield from _float32_env()


@pytest.fixture(scope="module")
def float32_module():
    """`float32_training` for a whole module, for module-scoped fixtures that train (or start Ray's workers, which
    inherit the environment at their start)."""
    yield from _float32_env()


def _float32_env():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAMBACAST_CPU_BF16", "0")
        yield


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs, started once per module and shut down after it (`--ray` and `tune` join
    the connection that exists); skips where Ray is not installed."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'mambacast[ray]')")
    # log_to_driver off: the workers' log lines would reach the tests' stderr at any later moment
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
