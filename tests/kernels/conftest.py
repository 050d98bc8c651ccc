"""Shared fixtures: the C++ kernels are compiled once per session (cached on disk after)."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def native_ok() -> bool:
    """True when the C++ kernels build here; tests that need them skip with the reason."""
    from sparsecraft.kernels.extension import extension_status

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    ok, reason = extension_status()
    if not ok:
        pytest.fail(f"a compiler is present but the kernels did not build: {reason}")
    return ok
