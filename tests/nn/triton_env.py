"""Where the Triton kernel tests run: on the GPU where there is one, else under Triton's interpreter, which reads
TRITON_INTERPRET=1 when Triton is first imported; so a test module imports this before anything imports Triton.

Import `interpreter` too: the autouse fixture skips the module where the kernels cannot run (no CUDA and the
interpreter switched off)."""

import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4)}


def _interpreter_takes_numpy_2_4() -> None:
    """Triton 3.6's interpreter turns a scalar into an index with `int()` of its one-element array, which NumPy
    2.4 refuses ("only 0-dimensional arrays can be converted to Python scalars"): every kernel's first `range()`
    fails. The tests make its `__index__` read the element instead; kernels and results are untouched."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = interpreter._patch_lang_tensor

    def patch(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patch


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_takes_numpy_2_4()


@pytest.fixture(scope="module", autouse=True)
def interpreter():
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA here and TRITON_INTERPRET is not 1: the Triton kernels cannot run")
