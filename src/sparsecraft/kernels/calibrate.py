"""The per-layer choice of a backend ("auto").

:func:`choose_backend` decides, for one weight and one batch size, which backend a layer uses. Rule:

1. Measure every usable candidate -- the dense calls (``dense`` = ``nn.Linear``, ``dense-t``,
   ``dense-addmm``, ``dense-mkldnn``) and the sparse kernels -- on a random input of ``batch``
   rows, block by block (:func:`sparsecraft.kernels.timing.time_blocks`: per round and
   candidate a warm-up then a block of timed calls; each candidate's fastest block median,
   because other jobs on a shared machine slow down whole blocks).
2. The dense option is the fastest dense call; ``nn.Linear`` itself is kept unless another
   dense call is faster by more than ``DENSE_MARGIN`` (3%, below that it is timing noise).
3. The fastest sparse backend is used only if it is clearly faster: its time at most
   ``(1 - margin)`` times the dense option's (default ``margin`` 0.10, i.e. <= 0.9x). A sparse
   win is confirmed by a second, head-to-head measurement of the two, and the less favourable
   of the two results decides. Otherwise the layer keeps the dense option -- never silently
   slower: the decision and the measured times are in the returned :class:`Decision`.

The times come from a *measure* function -- by default the real measurement above
(:func:`measure_backends`); tests and users can inject their own (a calibrated cost model, or
fixed numbers) to make the decision deterministic.
"""

from __future__ import annotations

import logging
import statistics
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from sparsecraft.kernels.backends import backend_names, get_backend
from sparsecraft.kernels.timing import time_blocks, time_calls

log = logging.getLogger("sparsecraft.kernels")

# dense-numpy is not an auto candidate: numpy's BLAS runs its own thread pool, which fights
# torch's OpenMP threads inside a model (measured alone it looked fast; in SmolLM2 decoding
# it made the converted model 4x slower). It stays available by name and as a benchmark peer.
DENSE_CANDIDATES = ("dense", "dense-t", "dense-addmm", "dense-mkldnn")
SPARSE_CANDIDATES = ("torch-csr", "csr16", "bitmap", "nm24", "cuda-2:4")
DENSE_MARGIN = 0.03
MeasureFn = Callable[[torch.Tensor, int, Sequence[str]], Mapping[str, float]]
__all__ = ["Decision", "choose_backend", "measure_backends", "time_calls", "usable_candidates"]


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
    rounds: int = 5,
    block: int = 20,
    block_s: float = 0.02,
    bias: torch.Tensor | None = None,
    input_sparsity: float = 0.0,
) -> dict[str, float]:
    """Real measurement: seconds per forward of a layer holding ``weight`` on ``batch`` rows,
    for each backend, as the model will run it: ``dense`` is a plain ``nn.Linear``, every other
    backend a :class:`~sparsecraft.kernels.SparseLinear` (wrapper cost included).
    ``input_sparsity``: that fraction of the input entries is zero (independently per row, the
    unfavourable case for kernels that skip columns zero in every row of the batch).

    Block-wise (:func:`~sparsecraft.kernels.timing.time_blocks`, ``rounds`` rounds, blocks of
    about ``block_s`` seconds, 3 to ``block`` calls), summarised by the fastest block median."""
    from torch import nn

    from sparsecraft.kernels.sparse_linear import SparseLinear

    out, inp = weight.shape
    x = torch.randn(batch, inp, dtype=weight.dtype, device=weight.device)
    if input_sparsity > 0:
        x = x.masked_fill(torch.rand(batch, inp, device=weight.device) < input_sparsity, 0)
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
    blocks = time_blocks(calls, rounds=rounds, block=block, warmup=2, block_s=block_s)
    # the best block of each candidate: other jobs on a shared machine slow down whole blocks
    # (a 2-thread call waits for its slower thread), and the quietest block of each candidate is
    # the fair comparison; inside a block the median ignores a single preempted call
    return {k: min(statistics.median(b) for b in v) for k, v in blocks.items()}


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


def _best_dense(dense: Sequence[str], times: Mapping[str, float]) -> str:
    """The fastest dense call; plain ``dense`` (nn.Linear) unless another is > DENSE_MARGIN faster."""
    best = min(dense, key=lambda n: times[n])
    if "dense" in dense and times[best] >= times["dense"] * (1 - DENSE_MARGIN):
        return "dense"
    return best


def choose_backend(
    weight: torch.Tensor,
    batch: int = 1,
    candidates: Sequence[str] | None = None,
    measure: MeasureFn | None = None,
    margin: float = 0.10,
    bias: torch.Tensor | None = None,
    input_sparsity: float = 0.0,
) -> Decision:
    """Pick the backend for ``weight`` at ``batch``: a sparse backend only if its time is at most
    ``(1 - margin)`` x the fastest dense call's (see the module docstring for the full rule).
    ``input_sparsity``: the fraction of zeros of the layer's input the measurement uses (the
    ``act-sparse`` backend skips them)."""
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
        times = measure_backends(weight, batch, dense + sparse, bias=bias, input_sparsity=input_sparsity)
    else:
        times = dict(measure(weight, batch, dense + sparse))
    ms = {k: v * 1e3 for k, v in times.items()}
    best_dense = _best_dense(dense, times)
    if not sparse:
        notes = "; ".join(f"{k}: {v}" for k, v in why.items())
        return Decision(best_dense, f"no sparse backend can run this layer ({notes})", batch, ms,
                        ms[best_dense], ms[best_dense])
    best_sparse = min(sparse, key=lambda n: times[n])
    limit = 1 - margin
    if measure is None and times[best_sparse] <= times[best_dense] * limit:
        # confirm a sparse win with a second, head-to-head measurement (noise on a busy
        # machine); keep the less favourable of the two results
        again = measure_backends(weight, batch, [best_dense, best_sparse], bias=bias, input_sparsity=input_sparsity)
        if again[best_sparse] / again[best_dense] > times[best_sparse] / times[best_dense]:
            times[best_sparse], times[best_dense] = again[best_sparse], again[best_dense]
            ms.update({k: v * 1e3 for k, v in again.items()})
    ratio = times[best_sparse] / times[best_dense]
    if ratio <= limit:
        reason = f"{best_sparse} {1 / ratio:.2f}x faster than {best_dense} at batch {batch}"
        return Decision(best_sparse, reason, batch, ms, ms[best_dense], ms[best_sparse])
    reason = (
        f"kept dense: best sparse ({best_sparse}) is {ratio:.2f}x the time of {best_dense} "
        f"at batch {batch} (needs <= {limit:.2f}x)"
    )
    return Decision(best_dense, reason, batch, ms, ms[best_dense], ms[best_dense])
