"""The fused CPU kernel for tests: skip where it cannot be built, unless the run requires it.

CI sets MAMBACAST_REQUIRE_KERNEL=1 (`.ci/run`): there a kernel that does not build fails the run instead of
skipping every fused-kernel test, so the fast path cannot silently go untested. Elsewhere (a user's machine
without a C++ compiler) the tests skip with the build error as the reason, and mambacast itself falls back
to the pure-PyTorch scan.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from mambacast import ops

REQUIRE_ENV = "MAMBACAST_REQUIRE_KERNEL"


def kernel_or_skip() -> Any:
    """The kernel's ops; skips the test where the kernel cannot be built, fails it when REQUIRE_ENV is 1."""
    try:
        return ops.load()
    except ops.ExtensionUnavailable as exc:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but the fused CPU kernel cannot be built here: {exc}", pytrace=False)
        pytest.skip(f"fused CPU kernel unavailable here (falls back to the chunked scan): {exc}")
