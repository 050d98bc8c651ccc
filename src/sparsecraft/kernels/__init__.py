"""Sparse inference on CPU: packed weights, C++ kernels, measured per-layer conversion.

``SparseLinear`` replaces ``nn.Linear`` with a packed weight; ``convert(model)`` swaps the
layers where a sparse kernel is measurably faster on this machine and reports every decision;
``bench_model`` times a model per layer and end to end, dense vs converted.
"""

from sparsecraft.kernels.backends import BACKENDS, Backend, backend_names, get_backend
from sparsecraft.kernels.calibrate import Decision, choose_backend, measure_backends, time_calls
from sparsecraft.kernels.convert import ConvertReport, LayerReport, convert
from sparsecraft.kernels.extension import ExtensionBuildError, extension_status
from sparsecraft.kernels.sparse_linear import SparseLinear

__all__ = [
    "BACKENDS",
    "Backend",
    "ConvertReport",
    "Decision",
    "ExtensionBuildError",
    "LayerReport",
    "SparseLinear",
    "backend_names",
    "choose_backend",
    "convert",
    "extension_status",
    "get_backend",
    "measure_backends",
    "time_calls",
]
