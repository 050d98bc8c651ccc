"""How many bytes a model's weights take in their packed formats, without writing a file.

:func:`weight_footprint` sizes every selected weight exactly as ``save(model, path,
format="auto")`` would store it: a quantized weight (:mod:`sparsecraft.quant`) in the smallest of
``qdense`` / ``qbitmap`` / ``qgroup`` (codes + float16 scales), any other in the smallest lossless
format (dense, bitmap, CSR, N:M, BSR). The result is the "bytes per weight" of the quality tables.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sparsecraft.formats.base import bits_view
from sparsecraft.formats.qcommon import pack_quantized
from sparsecraft.formats.select import choose_format
from sparsecraft.layout import layout_for
from sparsecraft.quant.state import get_quant


@torch.no_grad()
def weight_footprint(model: nn.Module, include: Sequence[str] = (r".*",)) -> dict[str, Any]:
    """``{"numel", "bytes", "bytes_per_weight", "formats": {format: count}}`` over the >= 2-D
    weights whose names match one of ``include`` (regexes); tied weights are counted once."""
    pats = [re.compile(p) for p in include]
    seen: set[int] = set()
    numel = nbytes = 0
    formats: dict[str, int] = {}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            name = f"{mname}.{pname}" if mname else pname
            if p.dim() < 2 or id(p) in seen or not any(r.search(name) for r in pats):
                continue
            seen.add(id(p))
            layout = layout_for(module, p)
            st = get_quant(module, pname)
            if st is not None:
                packed = pack_quantized(p.detach().cpu().float(), st, layout, "auto", name)
                fmt, size = packed.format, packed.nbytes
            else:
                f, size = choose_format(bits_view(p.detach().cpu()), layout)
                fmt = f.registry_name
            numel += p.numel()
            nbytes += size
            formats[fmt] = formats.get(fmt, 0) + 1
    return {"numel": numel, "bytes": nbytes, "bytes_per_weight": nbytes / numel if numel else 0.0, "formats": formats}
