import pytest
import torch

from sparsecraft.oneshot.sparsegpt import SparseGPT, inverse_hessian_factor, sparsegpt_prune
from sparsecraft.oneshot.stats import InputStats
from sparsecraft.patterns import NM, Unstructured


def planted(seed=0, rows=16, cols=64, n=512):
    g = torch.Generator().manual_seed(seed)
    # correlated inputs: a low-rank mix plus noise, a few strong features
    base = torch.randn(n, 8, generator=g) @ torch.randn(8, cols, generator=g)
    x = base + 0.3 * torch.randn(n, cols, generator=g)
    x[:, :4] *= 5
    w = torch.randn(rows, cols, generator=g)
    st = InputStats(cols, hessian=True)
    st.add(x)
    return w, x, st


def magnitude_mask(w, pattern, sparsity):
    return pattern.mask(w.abs(), sparsity)


def recon_error(w, w2, x):
    return float(torch.linalg.norm(x @ w.t() - x @ w2.t()))


@pytest.mark.parametrize("pattern", [Unstructured(), NM(2, 4), NM(4, 8)])
def test_sparsegpt_beats_magnitude_reconstruction(pattern):
    w, x, st = planted()
    new_w, keep = SparseGPT().prune(w, st, pattern, 0.5)
    assert bool((new_w[~keep] == 0).all())  # every pruned weight is zero (a kept one may be too)
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
    w, x, _ = planted(cols=16)
    x[:, 3] = 0
    st = InputStats(16, hessian=True)
    st.add(x)
    new_w, keep = SparseGPT().prune(w, st, Unstructured(), 0.25)
    assert (new_w[:, 3] == 0).all()
    assert torch.isfinite(new_w).all()


def test_sparsegpt_nm_block_not_multiple_of_m():
    w, x, st = planted(cols=48)
    new_w, keep = SparseGPT(blocksize=10).prune(w, st, NM(2, 4), 0.0)
    assert (keep.reshape(w.shape[0], -1, 4).sum(-1) == 2).all()
    assert bool((new_w[~keep] == 0).all())


def literal_sparsegpt(W, H, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01):
    """ALGORITHMS.md's SparseGPT, written out step by step (threshold cut, topk for N:M)."""
    W = W.clone().float()
    H = H.clone()
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
    w, x, st = planted(rows=12, cols=96)
    new_w, keep = SparseGPT(blocksize=32).prune(w, st, pattern, 0.5)
    ref = literal_sparsegpt(w, st.H, 0.5, *nm, blocksize=32)
    assert torch.equal(ref == 0, new_w == 0)
    assert torch.allclose(new_w, ref, atol=1e-4, rtol=1e-4)
