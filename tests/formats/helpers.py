"""Random tensors with arbitrary bit patterns (NaN payloads, -0.0, subnormals) and zeros."""

import numpy as np
import torch

from sparsecraft.formats.base import from_bits

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SPECIALS = {
    torch.float32: [0x80000000, 0x7FC00001, 0xFFFFFFFF, 0x00000001, 0x7F800000],
    torch.float16: [0x8000, 0x7E01, 0xFFFF, 0x0001, 0x7C00],
    torch.bfloat16: [0x8000, 0x7FC1, 0xFFFF, 0x0001, 0x7F80],
}


def random_bits(shape, dtype, sparsity, seed):
    """Tensor whose nonzeros are random bit patterns, zeros (+0.0) with prob. ``sparsity``."""
    rng = np.random.default_rng(seed)
    size = torch.empty((), dtype=dtype).element_size()
    hi = 2 ** (8 * size)
    x = rng.integers(1, hi, size=shape, dtype=np.uint64).astype(f"u{size}")
    x[rng.random(shape) < sparsity] = 0
    flat = x.reshape(-1)
    for i, v in enumerate(SPECIALS[dtype][: flat.size]):
        flat[i] = v
    return from_bits(x, dtype)


def nm_bits(rows, cols, n, m, dtype, seed):
    """Random-bit tensor with at most ``n`` nonzeros in every group of ``m`` along dim 1."""
    t = random_bits((rows, cols), dtype, 0.0, seed)
    rng = np.random.default_rng(seed + 1)
    keep = np.zeros((rows * cols // m, m), dtype=bool)
    order = np.argsort(rng.random(keep.shape), axis=1)[:, :n]
    np.put_along_axis(keep, order, True, axis=1)
    return t.masked_fill(~torch.from_numpy(keep.reshape(rows, cols)), 0)


def same_bits(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))
