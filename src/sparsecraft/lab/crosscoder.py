"""Crosscoders (L1 and BatchTopK) and Latent Scaling, for model diffing.

Paper: "Overcoming Sparsity Artifacts in Crosscoders to Interpret Chat-Tuning" (Minder et al.
2025, papers.txt). The experiment that uses this module is ``batchtopk-sae``
(:mod:`sparsecraft.lab.batchtopk_sae`), whose docstring describes the rules: the crosscoder with
one encoder over both models' activations and one decoder per model, the relative decoder norm
test for model-specific latents (:func:`decoder_split`) and Latent Scaling (:func:`latent_scaling`,
the closed-form fits ``beta`` on the error and reconstruction targets and their ratios ``nu``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import check_int
from sparsecraft.lab.batchtopk_sae import batch_topk, estimate_threshold


class Crosscoder(nn.Module):
    """Shared latents over two models' activations, one decoder per model (see the module doc)."""

    def __init__(self, d: int, m: int, *, sparsity: str = "batchtopk", k: int = 16, l1: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__()
        if sparsity not in ("batchtopk", "l1"):
            raise SparsecraftError(f"crosscoder sparsity must be 'batchtopk' or 'l1', got {sparsity!r}")
        self.sparsity, self.k, self.l1 = sparsity, check_int("k", k, 1), float(l1)
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(2, m, d, generator=g)
        w = 0.1 * w / w.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w.clone())  # (model, m, d)
        self.W_enc = nn.Parameter(torch.cat([w[0].t(), w[1].t()], dim=0).clone())  # (2d, m)
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(2, d))
        self.threshold: float | None = None

    def dec_norms(self) -> torch.Tensor:
        """(2, m): |d_base,j| and |d_ft,j|."""
        return self.W_dec.norm(dim=-1)

    def encode(self, xb: torch.Tensor, xf: torch.Tensor, inference: bool = False) -> torch.Tensor:
        f = F.relu(torch.cat([xb, xf], dim=-1) @ self.W_enc + self.b_enc)
        if self.sparsity == "l1":
            return f
        w = self.dec_norms().sum(0)
        if inference:
            if self.threshold is None:
                raise SparsecraftError("the crosscoder has no inference threshold yet: train it first")
            return f * (f * w > self.threshold)
        return batch_topk(f * w, self.k) / w.clamp_min(1e-8)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """(2, B, d) reconstructions of both models."""
        return torch.einsum("bm,nmd->nbd", f, self.W_dec) + self.b_dec[:, None, :]


def train_crosscoder(xb: torch.Tensor, xf: torch.Tensor, m: int, *, sparsity: str = "batchtopk", k: int = 16,
                     l1: float = 1.0, steps: int = 300, batch: int = 256, lr: float = 1e-3,
                     seed: int = 0) -> Crosscoder:
    """Adam on MSE of both reconstructions (+ the decoder-norm-weighted L1 term for ``"l1"``)."""
    cc = Crosscoder(xb.shape[1], m, sparsity=sparsity, k=k, l1=l1, seed=seed)
    with torch.no_grad():
        cc.b_dec.copy_(torch.stack([xb.mean(0), xf.mean(0)]))
    opt = torch.optim.Adam(cc.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    kept = []
    for step in range(steps):
        i = torch.randint(0, xb.shape[0], (batch,), generator=g)
        f = cc.encode(xb[i], xf[i])
        rec = cc.decode(f)
        loss = ((rec[0] - xb[i]) ** 2).sum(-1).mean() + ((rec[1] - xf[i]) ** 2).sum(-1).mean()
        if sparsity == "l1":
            loss = loss + l1 * (f * cc.dec_norms().sum(0)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sparsity == "batchtopk" and step >= steps // 2:
            kept.append((f * cc.dec_norms().sum(0)).detach())
    if sparsity == "batchtopk":
        cc.threshold = estimate_threshold(kept)
    return cc


def fit_scale(f: torch.Tensor, d: torch.Tensor, y: torch.Tensor) -> float:
    """argmin_beta sum_x |beta f(x) d - y(x)|^2 = sum_x f(x) <d, y(x)> / (|d|^2 sum_x f(x)^2)."""
    den = float((f ** 2).sum()) * float(d @ d)
    return float((f * (y @ d)).sum()) / den if den > 0 else 0.0


@torch.no_grad()
def latent_scaling(cc: Crosscoder, xb: torch.Tensor, xf: torch.Tensor, latents: list[int]) -> list[dict[str, Any]]:
    """For each latent j (direction ``d_ft,j``): ``nu_error`` and ``nu_recon`` = beta_base / beta_ft
    on the error and reconstruction targets (see the module doc); also the betas."""
    f = cc.encode(xb, xf, inference=cc.sparsity == "batchtopk")
    rec = cc.decode(f)
    xs = (xb, xf)
    out = []
    for j in latents:
        fj, d = f[:, j], cc.W_dec[1, j]
        betas = {}
        for mdl in (0, 1):
            without = rec[mdl] - fj[:, None] * cc.W_dec[mdl, j][None, :]
            betas[("error", mdl)] = fit_scale(fj, d, xs[mdl] - without)
            betas[("recon", mdl)] = fit_scale(fj, d, rec[mdl])
        row = {"latent": j}
        for t in ("error", "recon"):
            base, ft = betas[(t, 0)], betas[(t, 1)]
            row[f"beta_{t}_base"], row[f"beta_{t}_ft"] = base, ft
            row[f"nu_{t}"] = base / ft if abs(ft) > 1e-12 else float("inf")
        out.append(row)
    return out


def decoder_split(cc: Crosscoder, cut: float = 0.9) -> dict[str, list[int]]:
    """Latents by relative decoder norm r = |d_ft| / (|d_base| + |d_ft|): ``ft_only`` (r > cut),
    ``base_only`` (r < 1 - cut), ``shared``; latents whose decoders are both ~0 are ``dead``."""
    norms = cc.dec_norms().detach()
    tot = norms.sum(0)
    r = norms[1] / tot.clamp_min(1e-12)
    dead = tot < 1e-6
    out: dict[str, list[int]] = {"ft_only": [], "base_only": [], "shared": [], "dead": []}
    for j in range(norms.shape[1]):
        key = "dead" if dead[j] else "ft_only" if r[j] > cut else "base_only" if r[j] < 1 - cut else "shared"
        out[key].append(j)
    return out
