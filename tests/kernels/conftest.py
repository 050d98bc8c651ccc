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


@pytest.fixture
def kops(native_ok):
    """torch.ops.sparsecraft_kernels, with the instruction-set level and pool size restored after the test."""
    import torch

    from sparsecraft.kernels.extension import ops

    o = ops()
    level = o.isa()
    yield o
    o.set_isa(level)
    o.set_threads(min(2, torch.get_num_threads()))
