"""Shared fixtures of the lab tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny matmuls: one torch thread (two threads on a loaded 2-core machine are ~10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
