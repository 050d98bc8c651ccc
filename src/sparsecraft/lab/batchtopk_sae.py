"""BatchTopK sparse autoencoders and crosscoders with Latent Scaling, on SmolLM2 MLP activations.

Papers: "BatchTopK Sparse Autoencoders" (Bussmann et al. 2024) and "Overcoming Sparsity
Artifacts in Crosscoders to Interpret Chat-Tuning" (Minder et al. 2025, papers.txt).

**BatchTopK** (:func:`batch_topk`): the encoder's ReLU pre-activations of a whole batch of B
inputs compete together: the ``k * B`` largest entries of the (B, m) matrix survive, the rest are
zero, so the average L0 is exactly k while single inputs may use more or fewer latents. At
inference a batch is not available; the rule becomes a threshold (:func:`estimate_threshold`):
``theta`` = the mean over training batches of the smallest activation BatchTopK kept, and a latent
fires when its pre-activation exceeds ``theta``. Decoder rows are kept at unit norm.

**Crosscoder** (:class:`Crosscoder`): one dictionary read from the concatenated activations of
two models (base and fine-tuned) with one decoder per model. ``sparsity="l1"`` is the standard
loss (reconstruction of both + ``l1 * sum_j f_j (|d_base,j| + |d_ft,j|)``), ``sparsity="batchtopk"``
selects with BatchTopK on ``f_j * (|d_base,j| + |d_ft,j|)``. A latent is *fine-tuned-only* by the
usual decoder-norm test when ``|d_ft,j| / (|d_base,j| + |d_ft,j|) > 0.9``. **Latent Scaling**
(:func:`latent_scaling`) checks that test: for latent j with direction ``d = d_ft,j`` it fits
``beta`` in ``min sum_x |beta f_j(x) d - y(x)|^2`` (closed form) for each model and two targets:
the error target ``y = x_m - xhat_m^(-j)`` (what the other latents leave unexplained: if the
direction is in the base activations but the L1 loss shrank ``d_base,j`` to zero, the base error
still holds it -- "complete shrinkage") and the reconstruction target ``y = xhat_m`` (is the
direction carried by other latents in the base model's reconstruction -- "latent decoupling"). The ratios
``nu = beta_base / beta_ft`` near 0 mean genuinely fine-tuned-only; near 1 mean the latent exists in
both. The paper's claim: the L1 crosscoder's fine-tuned-only latents are often artifacts (high
nu), the BatchTopK crosscoder's much less so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int


def batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k * B`` largest entries of the (B, m) ReLU pre-activations ``pre`` over the whole
    batch (zero the rest); ties at the cut are resolved by ``torch.topk``."""
    check_int("k", k, 1)
    acts = F.relu(pre)
    flat = acts.flatten()
    n = min(k * pre.shape[0], flat.numel())
    idx = torch.topk(flat, n, sorted=False).indices
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[idx] = True
    return (flat * keep).view_as(acts)


def estimate_threshold(kept: list[torch.Tensor]) -> float:
    """The inference threshold: mean over batches of the smallest positive activation kept."""
    mins = [float(a[a > 0].min()) for a in kept if bool((a > 0).any())]
    if not mins:
        raise SparsecraftError("threshold estimation needs at least one batch with a positive activation")
    return sum(mins) / len(mins)


def fvu(x: torch.Tensor, xhat: torch.Tensor) -> float:
    """Fraction of variance unexplained: sum |x - xhat|^2 / sum |x - mean(x)|^2."""
    return float(((x - xhat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


class BatchTopKSAE(nn.Module):
    """``f = BatchTopK(relu((x - b_dec) W_enc + b_enc))``, ``xhat = f W_dec + b_dec`` (unit-norm rows)."""

    def __init__(self, d: int, m: int, k: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.k = check_int("k", k, 1)
        w = torch.randn(m, d, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w.clone())
        self.W_enc = nn.Parameter(w.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.threshold: float | None = None

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor, inference: bool = False) -> torch.Tensor:
        p = self.pre(x)
        if not inference:
            return batch_topk(p, self.k)
        if self.threshold is None:
            raise SparsecraftError("the SAE has no inference threshold yet: train it first")
        return F.relu(p) * (p > self.threshold)

    def forward(self, x: torch.Tensor, inference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x, inference)
        return f @ self.W_dec + self.b_dec, f


def _normalise_rows_(w: torch.Tensor) -> None:
    with torch.no_grad():
        w.div_(w.norm(dim=-1, keepdim=True).clamp_min(1e-8))


def train_sae(x: torch.Tensor, m: int, k: int, *, steps: int = 300, batch: int = 256, lr: float = 1e-3,
              seed: int = 0) -> BatchTopKSAE:
    """Adam on the batch MSE with unit-norm decoder rows; the inference threshold is estimated from
    the BatchTopK activations of the last half of training."""
    sae = BatchTopKSAE(x.shape[1], m, k, seed)
    with torch.no_grad():
        sae.b_dec.copy_(x.median(0).values)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    kept = []
    for step in range(steps):
        xb = x[torch.randint(0, x.shape[0], (batch,), generator=g)]
        xhat, f = sae(xb)
        loss = ((xhat - xb) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        _normalise_rows_(sae.W_dec)
        if step >= steps // 2:
            kept.append(f.detach())
    sae.threshold = estimate_threshold(kept)
    return sae


class _Stop(Exception):
    pass


@torch.no_grad()
def mlp_outputs(model: nn.Module, windows: torch.Tensor, layer: int) -> torch.Tensor:
    """(n * L, d) outputs of the MLP (its down projection) of block ``layer`` on the (n, L) token
    ``windows``, found with :func:`sparsecraft.activations.find_sites`; the forward stops there."""
    from sparsecraft.activations import find_sites

    sites = find_sites(model)
    if not 0 <= layer < len(sites):
        raise SparsecraftError(f"layer must be in [0, {len(sites) - 1}] for this model, got {layer}")
    got: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        got.append(out.detach().float().reshape(-1, out.shape[-1]))
        raise _Stop

    handle = sites[layer].projection.register_forward_hook(hook)
    try:
        for w in windows:
            try:
                model(input_ids=w[None], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(got)


def finetune_copy(model: nn.Module, windows: torch.Tensor, *, steps: int, lr: float = 1e-4,
                  layers: int | None = None) -> nn.Module:
    """A copy of the causal LM after ``steps`` Adam steps of next-token loss on ``windows`` (one
    window a step); with ``layers`` only the blocks below that index (and nothing else) train."""
    import copy

    from sparsecraft.oneshot.blockwise import find_blocks

    ft = copy.deepcopy(model)
    params = list(ft.parameters())
    if layers is not None:
        for p in params:
            p.requires_grad_(False)
        params = [p for b in list(find_blocks(ft).blocks)[:layers] for p in b.parameters()]
        for p in params:
            p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    ft.train()
    for step in range(steps):
        w = windows[step % len(windows)][None]
        loss = ft(input_ids=w, labels=w, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    ft.eval()
    for p in ft.parameters():
        p.requires_grad_(False)
    return ft


@EXPERIMENTS.register("batchtopk-sae")
class BatchTopKSAEExperiment(Experiment):
    """BatchTopK SAE (FVU vs k) and L1 vs BatchTopK crosscoders with Latent Scaling on SmolLM2."""

    paper = ("BatchTopK Sparse Autoencoders; Overcoming Sparsity Artifacts in Crosscoders to Interpret "
             "Chat-Tuning")
    claim = ("BatchTopK (top k*B activations over the batch, a threshold at inference) reconstructs better than "
             "per-sample sparsity at the same average L0; an L1 crosscoder's model-specific latents are often "
             "artifacts that Latent Scaling exposes (the latent is present in both models), a BatchTopK crosscoder "
             "has far fewer of them.")

    def __init__(self, model: str = "smollm2-135m", layer: int = 15, n_windows: int = 12, seq_len: int = 128,
                 expansion: int = 2, ks: tuple[int, ...] = (8, 16, 32), steps: int = 200,
                 finetune_steps: int = 6, finetune_lr: float = 3e-4, crosscoder_k: int = 16, l1: float = 0.2,
                 nu_cut: float = 0.3, seed: int = 0) -> None:
        if not isinstance(model, str) or not model:
            raise SparsecraftError(f"model must be a model name or path, got {model!r}")
        if not ks:
            raise SparsecraftError("ks needs at least one k")
        self.model, self.layer = model, check_int("layer", layer, 0)
        self.n_windows, self.seq_len = check_int("n_windows", n_windows, 4), check_int("seq_len", seq_len, 8)
        self.expansion, self.steps = check_int("expansion", expansion, 1), check_int("steps", steps, 10)
        self.ks = tuple(check_int("k", k, 1) for k in ks)
        self.finetune_steps = check_int("finetune_steps", finetune_steps, 1)
        self.finetune_lr = check_float("finetune_lr", finetune_lr, 0.0, 1.0, open_low=True)
        self.crosscoder_k, self.l1 = check_int("crosscoder_k", crosscoder_k, 1), check_float("l1", l1, 0.0, 1e3)
        self.nu_cut, self.seed = check_float("nu_cut", nu_cut, 0.0, 1.0, open_low=True), check_int("seed", seed, 0)

    def run(self, progress: bool = False) -> LabResult:
        from sparsecraft.data.text import build_protocol
        from sparsecraft.lab.crosscoder import decoder_split, latent_scaling, train_crosscoder
        from sparsecraft.models import load_model

        torch.set_num_threads(1)
        torch.manual_seed(self.seed)
        loaded = load_model(self.model)
        proto = build_protocol(loaded.tokenizer, "shakespeare", n_calib=self.n_windows,
                               n_eval=self.finetune_steps, seq_len=self.seq_len, seed=self.seed)
        base = loaded.model
        xb = mlp_outputs(base, proto.calib, self.layer)
        ft = finetune_copy(base, proto.eval, steps=self.finetune_steps, lr=self.finetune_lr, layers=self.layer + 1)
        xf = mlp_outputs(ft, proto.calib, self.layer)
        scale = float(xb.pow(2).sum(-1).mean().sqrt())  # one scale for both models: |x| ~ 1 on average
        xb, xf = xb / scale, xf / scale
        n_train = xb.shape[0] * 3 // 4
        m = xb.shape[1] * self.expansion
        change = float((xf - xb).norm(dim=-1).mean() / xb.norm(dim=-1).mean())
        sae_rows, sae_data = [], []
        for k in self.ks:
            sae = train_sae(xb[:n_train], m, k, steps=self.steps, batch=128, seed=self.seed)
            test = xb[n_train:]
            with torch.no_grad():
                rec_b, f_b = sae(test)
                rec_t, f_t = sae(test, inference=True)
            row = {"k": k, "fvu_batchtopk": fvu(test, rec_b), "fvu_threshold": fvu(test, rec_t),
                   "l0_threshold": float((f_t > 0).sum(-1).float().mean()), "threshold": sae.threshold,
                   "dead": float(((f_b > 0).sum(0) == 0).float().mean())}
            sae_data.append(row)
            sae_rows.append([str(k), f"{row['fvu_batchtopk']:.3f}", f"{row['threshold']:.4f}",
                             f"{row['fvu_threshold']:.3f}", f"{row['l0_threshold']:.1f}", f"{row['dead']:.2f}"])
        cc_rows, cc_data = [], []
        for kind in ("l1", "batchtopk"):
            cc = train_crosscoder(xb[:n_train], xf[:n_train], m, sparsity=kind, k=self.crosscoder_k, l1=self.l1,
                                  steps=self.steps, batch=128, seed=self.seed)
            with torch.no_grad():
                f = cc.encode(xb[n_train:], xf[n_train:], inference=kind == "batchtopk")
                rec = cc.decode(f)
            split = decoder_split(cc)
            scaled = latent_scaling(cc, xb, xf, split["ft_only"])
            active = [r for r in scaled if r["beta_error_ft"] != 0 or r["beta_recon_ft"] != 0]
            genuine = [r for r in active if abs(r["nu_error"]) < self.nu_cut and abs(r["nu_recon"]) < self.nu_cut]
            row = {"kind": kind, "fvu_base": fvu(xb[n_train:], rec[0]), "fvu_ft": fvu(xf[n_train:], rec[1]),
                   "l0": float((f > 0).sum(-1).float().mean()), **{key: len(v) for key, v in split.items()},
                   "ft_only_active": len(active), "ft_only_genuine": len(genuine), "scaling": scaled}
            cc_data.append(row)
            cc_rows.append([kind, f"{row['l0']:.1f}", f"{row['fvu_base']:.3f} / {row['fvu_ft']:.3f}",
                            str(row["shared"]), str(row["base_only"]), str(row["ft_only"]), str(len(active)),
                            str(len(genuine)), str(row["dead"])])
        t1 = LabTable(
            f"BatchTopK SAE on the MLP output of block {self.layer} of {self.model}: {n_train} training / "
            f"{xb.shape[0] - n_train} held-out tokens ({self.n_windows} Shakespeare windows of {self.seq_len}), "
            f"{m} latents ({self.expansion}x), {self.steps} Adam steps of batch 128; FVU on the held-out tokens",
            ["k (mean L0 in training)", "FVU, BatchTopK on the held-out batch", "inference threshold theta",
             "FVU, threshold", "L0, threshold", "dead latents"], sae_rows)
        t2 = LabTable(
            f"Crosscoders on base vs fine-tuned ({self.finetune_steps} Adam steps at lr {self.finetune_lr:g} on "
            f"other Shakespeare windows, blocks 0-{self.layer}; mean relative change of the activations "
            f"{change:.3f}); fine-tuned-only = relative decoder norm > 0.9; genuine = both Latent Scaling ratios "
            f"|nu_error|, |nu_recon| < {self.nu_cut} (latents that fire on this data)",
            ["crosscoder", "L0", "FVU base / ft", "shared", "base-only", "ft-only (decoder norm)",
             "ft-only that fire", "ft-only genuine after Latent Scaling", "dead"], cc_rows)
        best = min(sae_data, key=lambda r: r["fvu_batchtopk"])
        l1r, btk = cc_data
        finding = ("FVU falls with k: " + ", ".join(f"k={r['k']}: {r['fvu_batchtopk']:.3f}" for r in sae_data) +
                   f" (best {best['fvu_batchtopk']:.3f}); the estimated threshold gives FVU " +
                   ", ".join(f"{r['fvu_threshold']:.3f} at L0 {r['l0_threshold']:.1f}" for r in sae_data) +
                   f". Crosscoders (activations changed by {change:.3f} on average): the L1 crosscoder calls "
                   f"{l1r['ft_only']} latents fine-tuned-only, {l1r['ft_only_genuine']} of them survive Latent "
                   f"Scaling; the BatchTopK crosscoder {btk['ft_only']}, {btk['ft_only_genuine']} surviving.")
        return LabResult(self.name, self.claim, [t1, t2], finding,
                         {"sae": sae_data, "crosscoders": cc_data, "activation_change": change})
