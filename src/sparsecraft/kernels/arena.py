"""One memory arena for the tensors a decode loop streams every token, in transparent huge pages.

The decode path reads every weight once per token. With 4 KiB pages that is a TLB miss every 4 KiB
and hardware prefetchers that stop at each page boundary; backing the packed weights with 2 MiB
pages (Linux transparent huge pages, asked for with ``madvise(MADV_HUGEPAGE)``: the machine's
``/sys/kernel/mm/transparent_hugepage/enabled`` is often ``madvise``, so an ordinary allocation gets
none) made the int8-input 4096 x 4096 int4 bitmap kernel ~8% faster when cycling through 96 MiB of
weights (notes in docs/quantization.md). Elsewhere (no Linux, no huge pages) the arena is still one
64-byte-aligned buffer and nothing else changes.
"""

from __future__ import annotations

import ctypes
import sys

import torch

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14
ALIGN = 64


def _madvise_huge(addr: int, length: int) -> bool:
    if not sys.platform.startswith("linux") or length <= 0:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), MADV_HUGEPAGE) == 0
    except (OSError, AttributeError):
        return False


def in_arena(tensors: list[torch.Tensor], min_bytes: int = HUGE_PAGE) -> tuple[list[torch.Tensor], bool]:
    """Copies of ``tensors`` (contiguous CPU tensors) in one buffer, each 64-byte aligned, and whether
    huge pages were asked for. A tensor listed twice (the same storage and shape: a tied LM head) is
    copied once and both entries share the copy. Below ``min_bytes`` in total the inputs come back as
    they are (nothing to gain)."""
    key = [(t.data_ptr(), tuple(t.shape), t.dtype) for t in tensors]
    first: dict[tuple, int] = {}
    offsets: list[int] = []
    size = 0
    for i, (k, t) in enumerate(zip(key, tensors)):
        if k in first:
            offsets.append(offsets[first[k]])
            continue
        first[k] = i
        offsets.append(size)
        size += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    if size < min_bytes:
        return list(tensors), False
    buf = torch.empty(size + HUGE_PAGE, dtype=torch.uint8)  # untouched pages: madvise before the copy
    start = -buf.data_ptr() % HUGE_PAGE
    huge = _madvise_huge(buf.data_ptr() + start, -(-size // HUGE_PAGE) * HUGE_PAGE)
    out: list[torch.Tensor] = []
    for i, (k, t) in enumerate(zip(key, tensors)):
        if first[k] != i:
            out.append(out[first[k]])
            continue
        nbytes = t.numel() * t.element_size()
        view = buf[start + offsets[i]: start + offsets[i] + nbytes].view(t.dtype).view(t.shape)
        view.copy_(t)
        out.append(view)
    return out, huge
