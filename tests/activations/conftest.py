"""The C++ kernels fixture of tests/kernels, shared here (the CETT kernel lives in the same extension)."""

from tests.kernels.conftest import native_ok  # noqa: F401
