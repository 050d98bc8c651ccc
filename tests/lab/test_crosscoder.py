"""Crosscoder pieces on hand-built cases: the closed-form scale fit, decoder-norm classes, Latent
Scaling telling a genuine fine-tuned-only latent from a shrinkage artifact, decoder-weighted
BatchTopK selection."""

import numpy as np
import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.crosscoder import Crosscoder, decoder_split, fit_scale, latent_scaling


def test_fit_scale_is_least_squares():
    g = torch.Generator().manual_seed(0)
    f, d, y = torch.rand(20, generator=g), torch.randn(3, generator=g), torch.randn(20, 3, generator=g)
    a = (f[:, None] * d[None, :]).reshape(-1, 1).numpy()  # beta * f(x) d, stacked over x
    beta = np.linalg.lstsq(a, y.reshape(-1).numpy(), rcond=None)[0][0]
    assert fit_scale(f, d, y) == pytest.approx(float(beta), rel=1e-5)
    assert fit_scale(torch.zeros(4), d, y[:4]) == 0.0


def hand_crosscoder(base_decoder_of_latent1: float) -> Crosscoder:
    """d = 2, m = 2: latent 0 reads base e1, latent 1 reads fine-tuned e2; decoders by hand."""
    cc = Crosscoder(2, 2, sparsity="l1")
    with torch.no_grad():
        cc.W_enc.zero_()
        cc.W_enc[0, 0] = 1.0  # base coordinate 1 -> latent 0
        cc.W_enc[3, 1] = 1.0  # fine-tuned coordinate 2 -> latent 1
        cc.b_enc.zero_()
        cc.b_dec.zero_()
        cc.W_dec.zero_()
        cc.W_dec[0, 0, 0] = cc.W_dec[1, 0, 0] = 1.0  # latent 0: e1 in both models
        cc.W_dec[1, 1, 1] = 1.0  # latent 1: e2 in the fine-tuned model
        cc.W_dec[0, 1, 1] = base_decoder_of_latent1
    return cc


def data(base_has_e2: bool):
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(200, generator=g), torch.rand(200, generator=g)
    xf = torch.stack([a, b], dim=1)
    xb = torch.stack([a, b if base_has_e2 else torch.zeros(200)], dim=1)
    return xb, xf


def test_decoder_split_by_relative_norm():
    split = decoder_split(hand_crosscoder(0.0))
    assert split == {"ft_only": [1], "base_only": [], "shared": [0], "dead": []}
    assert decoder_split(hand_crosscoder(1.0))["shared"] == [0, 1]


def test_latent_scaling_separates_genuine_latents_from_shrinkage():
    cc = hand_crosscoder(0.0)
    genuine = latent_scaling(cc, *data(base_has_e2=False), [1])[0]
    assert genuine["beta_error_ft"] == pytest.approx(1.0) and genuine["nu_error"] == pytest.approx(0.0, abs=1e-6)
    assert genuine["nu_recon"] == pytest.approx(0.0, abs=1e-6)
    # the base model does hold e2 but the base decoder was shrunk to 0: the base error keeps it
    artifact = latent_scaling(cc, *data(base_has_e2=True), [1])[0]
    assert artifact["nu_error"] == pytest.approx(1.0) and artifact["nu_recon"] == pytest.approx(0.0, abs=1e-6)


def test_batchtopk_crosscoder_ranks_latents_by_activation_times_decoder_norm():
    cc = Crosscoder(1, 2, sparsity="batchtopk", k=1)
    with torch.no_grad():
        cc.W_enc.copy_(torch.tensor([[2.0, 1.0], [0.0, 0.0]]))
        cc.b_enc.zero_()
        cc.W_dec.zero_()
        cc.W_dec[:, 0, 0] = 0.1  # latent 0: larger activation (2), tiny decoders (0.2 in total)
        cc.W_dec[:, 1, 0] = 1.0  # latent 1: activation 1, decoders 2 in total
    f = cc.encode(torch.ones(1, 1), torch.ones(1, 1))
    assert torch.allclose(f, torch.tensor([[0.0, 1.0]]))
    with pytest.raises(SparsecraftError, match="no inference threshold"):
        cc.encode(torch.ones(1, 1), torch.ones(1, 1), inference=True)
    with pytest.raises(SparsecraftError, match="'batchtopk' or 'l1'"):
        Crosscoder(1, 2, sparsity="topk")
