import torch

import sparsecraft
from sparsecraft.masks import masked_params

from .tiny import tiny_llama


def test_magnitude_is_per_matrix_on_the_block_linears_only():
    model = tiny_llama(seed=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sparsecraft.prune(model, 0.5, progress=False)  # criterion magnitude, no calibration
    masked = {mp.name for mp in masked_params(model)}
    assert masked and all(n.startswith("model.layers.") for n in masked)
    for mp in masked_params(model):
        w0 = before[mp.name].abs().reshape(-1)
        k = w0.numel() // 2  # floor(0.5 * n) of this matrix, smallest |w| first (ties by position)
        expected = torch.ones_like(w0, dtype=torch.bool)
        expected[torch.argsort(w0, stable=True)[:k]] = False
        assert torch.equal(mp.mask.reshape(-1), expected), mp.name
    for n, p in model.named_parameters():  # embeddings, norms and the LM head are untouched
        if n not in masked:
            assert torch.equal(p, before[n]), n


def test_magnitude_nm_rows():
    torch.manual_seed(0)
    model = tiny_llama(seed=4)
    sparsecraft.prune(model, 0.0, pattern="4:8", progress=False)
    for mp in masked_params(model):
        keep = mp.mask.reshape(mp.mask.shape[0], -1, 8)
        a = mp.param.detach().abs().reshape(keep.shape)
        assert (keep.sum(-1) == 4).all()
        kept = torch.where(keep, a, torch.full_like(a, float("inf"))).amin(-1)
        gone = torch.where(~keep, a, torch.full_like(a, -1.0)).amax(-1)
        assert (kept >= gone).all()
