"""The C++ kernels fixture, shared with tests/kernels."""

from tests.kernels.conftest import native_ok  # noqa: F401
