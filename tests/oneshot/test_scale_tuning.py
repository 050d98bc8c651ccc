"""GQSA's stage 2: only the scales train; codes, masks and the grid stay exact; the loss falls."""

from __future__ import annotations

import pytest
import torch

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.evaluation.perplexity import perplexity
from sparsecraft.oneshot.scale_tuning import tune_scales
from sparsecraft.quant.state import get_quant, quantized_params
from tests.oneshot.tiny import calib_ids, tiny_llama


def test_tune_scales_keeps_codes_and_masks():
    m = tiny_llama()
    ids = calib_ids(8, 16)
    sparsecraft.prune(m, 0.5, method="gqsa", group=4, quantize={"bits": 4, "group": 16}, calib=ids, progress=False)
    before = {n: (get_quant(mod).codes(mod.weight.detach()), mod.weight.detach().clone(), get_quant(mod).scale.clone())
              for n, mod, _, _ in quantized_params(m)}
    ppl0 = perplexity(m, ids, progress=False)
    res = tune_scales(m, ids, steps=16, lr=1e-3, progress=False)
    assert len(res.losses) == 16
    assert perplexity(m, ids, progress=False) < ppl0  # trained on these windows: their loss falls
    changed = 0
    for n, mod, _, st in quantized_params(m):
        codes, w0, s0 = before[n]
        assert torch.equal(st.codes(mod.weight.detach()), codes)  # same integers, new scales
        assert isinstance(mod.weight, torch.nn.Parameter) and mod.weight.requires_grad
        assert torch.equal(mod.weight.detach() == 0, w0 == 0) or (mod.weight.detach() != 0).sum() <= (w0 != 0).sum()
        changed += int(not torch.equal(st.scale, s0))
        assert torch.equal(st.scale, st.scale.half().float())  # still float16 values
    assert changed > 0
    assert not any(n.endswith("_scale_tuned") for n, _ in m.named_parameters())


def test_tune_scales_needs_quantized_layers():
    with pytest.raises(SparsecraftError, match="no quantized Linear"):
        tune_scales(tiny_llama(), calib_ids(), steps=1, progress=False)
