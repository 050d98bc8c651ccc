"""SliceGPT's modules: the scale-free RMSNorm over the original width, the shortcut layer."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.structure.sliced import RMSN, check_llama_style

from .models import HF_MAKERS


def test_rmsn_divides_by_the_original_width():
    # x = (3, 4), original width 4: mean square = 25 / 4 -> x / 2.5
    out = RMSN(4, 0.0)(torch.tensor([[3.0, 4.0]]))
    assert out.tolist() == [[pytest.approx(1.2), pytest.approx(1.6)]]
    # equal to a dense RMSNorm with unit scale when nothing is sliced
    x = torch.randn(3, 6)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.allclose(RMSN(6, 1e-6)(x), ref, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "opt", "bert"])
def test_only_llama_style_models(arch):
    with pytest.raises(SparsecraftError, match="Llama-style models"):
        check_llama_style(HF_MAKERS[arch]())
