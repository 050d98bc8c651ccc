"""Timing and the per-layer choice of a backend ("auto").

:func:`time_calls` times several callables side by side: after a warm-up it runs them in
interleaved rounds (a, b, c, a, b, c, ...) and returns each one's median, so a burst of load
on a shared machine hits every candidate alike (:func:`time_samples` gives every sample).

:func:`choose` decides, for one weight and one batch size, which backend a layer uses:
the fastest sparse backend wins only if it beats the best dense call by ``margin`` (default
5%, a guard against timing noise); otherwise the layer keeps the best dense call. The times
come from a *measure* function -- by default a quick real measurement on this machine
(:func:`measure_backends`); tests and users can inject their own (a calibrated cost model, or
fixed numbers) to make the decision deterministic.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from sparsecraft.kernels.backends import backend_names, get_backend

log = logging.getLogger("sparsecraft.kernels")

# dense-numpy is not an auto candidate: numpy's BLAS runs its own thread pool, which fights
# torch's OpenMP threads inside a model (measured alone it looked fast; in SmolLM2 decoding
# it made the converted model 4x slower). It stays available by name and as a benchmark peer.
DENSE_CANDIDATES = ("dense", "dense-t", "dense-addmm", "dense-mkldnn")
SPARSE_CANDIDATES = ("torch-csr", "csr16", "bitmap", "nm24", "cuda-2:4")
MeasureFn = Callable[[torch.Tensor, int, Sequence[str]], Mapping[str, float]]


def time_samples(
    calls: Mapping[str, Callable[[], object]],
    repeats: int = 20,
    warmup: int = 3,
    budget_s: float | None = None,
) -> dict[str, list[float]]:
    """Seconds of every call of each callable, measured in interleaved rounds.

    ``budget_s`` stops early (after at least 5 rounds) once the rounds took that long, so
    fast calls get many rounds and slow ones few.
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in calls}
    start = time.perf_counter()
    for i in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
        if budget_s is not None and i >= 4 and time.perf_counter() - start > budget_s:
            break
    return samples


def time_calls(
    calls: Mapping[str, Callable[[], object]],
    repeats: int = 20,
    warmup: int = 3,
    budget_s: float | None = None,
) -> dict[str, float]:
    """Median seconds per call of each callable (see :func:`time_samples`)."""
    return {k: statistics.median(v) for k, v in time_samples(calls, repeats, warmup, budget_s).items()}


def usable_candidates(weight: torch.Tensor, names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(backends of ``names`` that can run ``weight`` here, {name: why not} for the others)."""
    ok, why = [], {}
    for name in names:
        b = get_backend(name)
        avail, reason = b.available()
        reason = reason if not avail else b.supports(weight)
        if reason:
            why[name] = reason
        else:
            ok.append(name)
    return ok, why


@torch.no_grad()
def measure_backends(
    weight: torch.Tensor,
    batch: int,
    names: Sequence[str],
    repeats: int = 200,
    budget_s: float = 0.5,
    bias: torch.Tensor | None = None,
) -> dict[str, float]:
    """Quick real measurement: seconds per forward (fastest of the interleaved rounds) of a
    layer holding ``weight`` on ``batch`` rows, for each backend -- as the model will run it:
    ``dense`` is a plain ``nn.Linear``, every other backend a
    :class:`~sparsecraft.kernels.SparseLinear` (wrapper cost included)."""
    from torch import nn

    from sparsecraft.kernels.sparse_linear import SparseLinear

    out, inp = weight.shape
    x = torch.randn(batch, inp, dtype=weight.dtype, device=weight.device)
    calls = {}
    for name in names:
        if name == "dense":
            layer = nn.Linear(inp, out, bias=bias is not None, dtype=weight.dtype, device=weight.device)
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        else:
            layer = SparseLinear(inp, out, name, get_backend(name).pack(weight), bias)
        calls[name] = lambda layer=layer: layer(x)
    if weight.is_cuda:  # time the kernel, not the launch
        calls = {k: (lambda f=f: (f(), torch.cuda.synchronize())) for k, f in calls.items()}
    samples = time_samples(calls, repeats=repeats, warmup=5, budget_s=budget_s)
    # the fastest round: on a shared machine a call is often preempted, which inflates the
    # median of a short measurement far more than the cost differences between backends
    return {k: min(v) for k, v in samples.items()}


@dataclass
class Decision:
    """What ``auto`` chose for one layer, and why."""

    backend: str
    reason: str
    batch: int
    times_ms: dict[str, float] = field(default_factory=dict)
    dense_ms: float | None = None
    chosen_ms: float | None = None

    @property
    def speedup(self) -> float | None:
        if self.dense_ms is None or not self.chosen_ms:
            return None
        return self.dense_ms / self.chosen_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        log.warning(message)


def choose(
    weight: torch.Tensor,
    batch: int = 1,
    candidates: Sequence[str] | None = None,
    measure: MeasureFn | None = None,
    margin: float = 0.05,
    bias: torch.Tensor | None = None,
) -> Decision:
    """Pick the backend for ``weight`` at ``batch``: sparse only if measurably faster than dense."""
    names = list(candidates) if candidates is not None else [
        n for n in backend_names() if n in DENSE_CANDIDATES + SPARSE_CANDIDATES
    ]
    usable, why = usable_candidates(weight, names)
    for name, reason in why.items():
        if name in ("csr16", "bitmap", "nm24") and reason.startswith("C++ kernels unavailable"):
            warn_once(f"sparsecraft auto backend: {reason}; falling back to torch-csr")
    dense = [n for n in usable if get_backend(n).dense]
    sparse = [n for n in usable if not get_backend(n).dense]
    if not dense:
        dense = ["dense"]
    if measure is None:
        times = measure_backends(weight, batch, dense + sparse, bias=bias)
    else:
        times = dict(measure(weight, batch, dense + sparse))
    ms = {k: v * 1e3 for k, v in times.items()}
    best_dense = min(dense, key=lambda n: times[n])
    if not sparse:
        notes = "; ".join(f"{k}: {v}" for k, v in why.items())
        return Decision(best_dense, f"no sparse backend can run this layer ({notes})", batch, ms,
                        ms[best_dense], ms[best_dense])
    best_sparse = min(sparse, key=lambda n: times[n])
    ratio = times[best_dense] / times[best_sparse]
    if measure is None and times[best_sparse] < times[best_dense] * (1 - margin):
        # confirm a sparse win with a second, head-to-head measurement (noise on a busy
        # machine); keep the less favourable of the two results
        again = measure_backends(weight, batch, [best_dense, best_sparse], bias=bias)
        if again[best_sparse] / again[best_dense] > times[best_sparse] / times[best_dense]:
            times[best_sparse], times[best_dense] = again[best_sparse], again[best_dense]
            ms.update({k: v * 1e3 for k, v in again.items()})
        ratio = times[best_dense] / times[best_sparse]
    if times[best_sparse] < times[best_dense] * (1 - margin):
        reason = f"{best_sparse} {ratio:.2f}x faster than {best_dense} at batch {batch}"
        return Decision(best_sparse, reason, batch, ms, ms[best_dense], ms[best_sparse])
    reason = (
        f"kept dense: best sparse ({best_sparse}) is {1 / ratio:.2f}x the time of {best_dense} "
        f"at batch {batch} (needs < {1 - margin:.2f}x)"
    )
    return Decision(best_dense, reason, batch, ms, ms[best_dense], ms[best_dense])
