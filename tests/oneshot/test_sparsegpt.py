import math

import pytest
import torch

from sparsecraft.oneshot.sparsegpt import SparseGPT, inverse_hessian_factor, sparsegpt_prune
from sparsecraft.oneshot.stats import InputStats
from sparsecraft.patterns import NM, Unstructured


def planted(seed=0, rows=16, cols=64, n=512, batches=4, scale=1.0, dead=()):
    """Weights and calibration inputs as a layer sees them: ``batches`` batches of
    (2 sequences, n / (2 * batches) tokens, cols); correlated features, a few strong ones,
    the columns in ``dead`` never firing."""
    g = torch.Generator().manual_seed(seed)
    # correlated inputs: a low-rank mix plus noise, a few strong features
    base = torch.randn(n, 8, generator=g) @ torch.randn(8, cols, generator=g)
    x = scale * (base + 0.3 * torch.randn(n, cols, generator=g))
    x[:, :4] *= 5
    x[:, list(dead)] = 0
    w = torch.randn(rows, cols, generator=g)
    xs = list(x.reshape(batches, 2, -1, cols))
    st = InputStats(cols, hessian=True)
    for xb in xs:
        st.add(xb)
    return w, x, st, xs


def magnitude_mask(w, pattern, sparsity):
    return pattern.mask(w.abs(), sparsity)


def recon_error(w, w2, x):
    return float(torch.linalg.norm(x @ w.t() - x @ w2.t()))


@pytest.mark.parametrize("pattern", [Unstructured(), NM(2, 4), NM(4, 8)])
def test_sparsegpt_beats_magnitude_reconstruction(pattern):
    w, x, st, _ = planted()
    new_w, keep = SparseGPT().prune(w, st, pattern, 0.5)
    assert torch.equal(new_w == 0, ~keep)  # pruned weights are 0; no input is dead here, so no kept one is
    assert int((~keep).sum()) == w.numel() // 2
    if isinstance(pattern, NM):
        assert (keep.reshape(w.shape[0], -1, pattern.m).sum(-1) == pattern.n).all()
    mag = w * magnitude_mask(w, pattern, 0.5)
    assert recon_error(w, new_w, x) < 0.7 * recon_error(w, mag, x)


def test_sparsegpt_obs_update_hand_checked():
    # H = [[2, 1], [1, 2]], w = [0.1, 1]: w1 goes, and w2 <- w2 - w1 * U12/U11 = 1 + 0.1/2
    H = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    U, dead = inverse_hessian_factor(H, percdamp=0.0)
    assert torch.allclose(U.t() @ U, torch.linalg.inv(H), atol=1e-6)
    new_w, keep = sparsegpt_prune(torch.tensor([[0.1, 1.0]]), U, dead, Unstructured(), 0.5)
    assert keep.tolist() == [[False, True]]
    assert torch.allclose(new_w, torch.tensor([[0.0, 1.05]]), atol=1e-6)


def test_sparsegpt_identity_hessian_is_blockwise_magnitude():
    torch.manual_seed(3)
    w = torch.randn(8, 32)
    U, dead = inverse_hessian_factor(torch.eye(32) * 3.0)
    new_w, keep = sparsegpt_prune(w, U, dead, Unstructured(), 0.5)
    assert torch.equal(keep, magnitude_mask(w, Unstructured(), 0.5))
    assert torch.allclose(new_w, w * keep)


def test_sparsegpt_dead_inputs_are_zeroed():
    w, x, st, _ = planted(cols=16, dead=[3])
    new_w, keep = SparseGPT().prune(w, st, Unstructured(), 0.25)
    assert (new_w[:, 3] == 0).all()
    assert torch.isfinite(new_w).all()


def test_sparsegpt_nm_block_not_multiple_of_m():
    w, x, st, _ = planted(cols=48)
    new_w, keep = SparseGPT(blocksize=10).prune(w, st, NM(2, 4), 0.0)
    assert (keep.reshape(w.shape[0], -1, 4).sum(-1) == 2).all()
    assert bool((new_w[~keep] == 0).all())


def reference_hessian(batches):
    """The reference's ``add_batch`` (IST-DASLab/sparsegpt), one batch at a time: a running mean
    over calibration *sequences* (a batch (b, L, in) counts b) of 2 x x^T, kept normalised as it
    goes: H <- H * n / (n + b); n <- n + b; H <- H + (sqrt(2 / n) X)(sqrt(2 / n) X)^T."""
    cols = batches[0].shape[-1]
    H = torch.zeros(cols, cols)
    nsamples = 0
    for inp in batches:
        tmp = inp.shape[0] if inp.dim() == 3 else 1
        inp = inp.reshape(-1, cols).t().float()
        H *= nsamples / (nsamples + tmp)
        nsamples += tmp
        inp = math.sqrt(2 / nsamples) * inp
        H += inp @ inp.t()
    return H


def literal_sparsegpt(W, batches, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01):
    """ALGORITHMS.md's SparseGPT written out step by step from the raw calibration batches:
    H = (2/n) X X^T as the reference accumulates it, dead inputs -> H_ii = 1 and W[:, i] = 0,
    damping 1% of mean(diag H), upper Cholesky factor of H^-1, 128-column blocks, OBS updates.
    The unstructured cut prunes exactly floor(s * block size) per block (the paper's rule; the
    reference code's ``<= sorted[int(s * n)]`` prunes one more)."""
    W = W.clone().float()
    H = reference_hessian(batches)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0])
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    cols = W.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1**2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity) - 1]
            mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if prunen and i % prunem == 0:
                tmp = W1[:, i : i + prunem] ** 2 / torch.diag(Hinv1)[i : i + prunem].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W


@pytest.mark.parametrize("pattern, nm", [(Unstructured(), (0, 0)), (NM(2, 4), (2, 4)), (NM(4, 8), (4, 8))])
def test_sparsegpt_matches_the_literal_algorithm(pattern, nm):
    w, x, st, xs = planted(rows=12, cols=96)
    new_w, keep = SparseGPT(blocksize=32).prune(w, st, pattern, 0.5)
    ref = literal_sparsegpt(w, xs, 0.5, *nm, blocksize=32)
    assert torch.equal(ref == 0, new_w == 0)
    assert torch.allclose(new_w, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pattern, nm", [(Unstructured(), (0, 0)), (NM(2, 4), (2, 4))])
def test_sparsegpt_with_dead_inputs_matches_the_reference_scale(pattern, nm):
    # Small activations: (2/n) X X^T has a diagonal far below 1, so the dead inputs' H_ii = 1
    # weighs in the mean that sets the damping. Only a Hessian on the reference's scale gives
    # the reference's damping and therefore its masks and weights.
    dead = [5, 37, 70]
    w, x, st, xs = planted(rows=16, cols=96, scale=0.02, dead=dead)
    new_w, keep = SparseGPT(blocksize=32).prune(w, st, pattern, 0.5)
    ref = literal_sparsegpt(w, xs, 0.5, *nm, blocksize=32)
    assert (new_w[:, dead] == 0).all() and not keep[:, dead].any()
    assert torch.equal(ref == 0, new_w == 0)
    assert torch.allclose(new_w, ref, atol=1e-4, rtol=1e-4)


def test_hessian_is_two_over_n_sequences_times_xxt():
    # by hand: two batches of one and two sequences of one token each: x = 1, 2, 3 (one feature)
    st = InputStats(1, hessian=True)
    st.add(torch.tensor([[[1.0]]]))
    st.add(torch.tensor([[[2.0]], [[3.0]]]))
    assert st.samples == 3 and st.n == 3
    assert float(st.hessian()) == pytest.approx(2 / 3 * (1 + 4 + 9))
