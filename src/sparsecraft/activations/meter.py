"""The activation meter: how sparse the MLP hidden activation of a model is, layer by layer.

Lazy Neuron (Li et al. 2023) measures the fraction of nonzero entries of the MLP hidden
activation per token (T5-Base 3.0%, ViT-B/16 6.3% nonzero). :class:`ActivationMeter` hooks the
input of every down projection (:mod:`sparsecraft.activations.sites`; for a site with an
activation transform, the activation *after* the rule) with a forward pre-hook that only reads
it, so the model's outputs are bit-identical with and without the meter. Per layer it counts:

* ``zero_fraction``: exact zeros / all entries (every position the model sees is a token);
* ``eps_fraction``: entries with ``|a| <= eps``;
* a histogram of ``log10|a|`` of the nonzero entries on fixed bin edges (:data:`LOG10_EDGES`),
  plus the counts of exact zeros, of values below the first edge and above the last;
* per-token statistics of both fractions (mean, std, min, 5/50/95th percentile, max) and the
  dead neurons (never ``|a| > eps`` on any token seen).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from sparsecraft.activations.sites import MLPSite, find_sites
from sparsecraft.errors import SparsecraftError

LOG10_EDGES = torch.arange(-8.0, 4.0001, 0.25, dtype=torch.float64)  #: histogram bin edges of log10|a|


def _quantiles(x: torch.Tensor) -> dict[str, float]:
    if x.numel() == 0:
        return {k: float("nan") for k in ("mean", "std", "min", "p05", "p50", "p95", "max")}
    x = x.double()
    q = torch.quantile(x, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return {"mean": float(x.mean()), "std": float(x.std(unbiased=False)), "min": float(x.min()),
            "p05": float(q[0]), "p50": float(q[1]), "p95": float(q[2]), "max": float(x.max())}


@dataclass
class LayerActivationStats:
    """What the meter saw at one MLP site."""

    name: str
    hidden: int
    tokens: int
    zero_fraction: float
    eps_fraction: float
    dead_neurons: int
    per_token_zero: dict[str, float]
    per_token_eps: dict[str, float]
    histogram: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ActivationReport:
    """Per-layer statistics and the totals over all sites (weighted by entries)."""

    eps: float
    layers: list[LayerActivationStats] = field(default_factory=list)

    @property
    def zero_fraction(self) -> float:
        n = sum(s.tokens * s.hidden for s in self.layers)
        return sum(s.zero_fraction * s.tokens * s.hidden for s in self.layers) / n if n else float("nan")

    @property
    def eps_fraction(self) -> float:
        n = sum(s.tokens * s.hidden for s in self.layers)
        return sum(s.eps_fraction * s.tokens * s.hidden for s in self.layers) / n if n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"eps": self.eps, "zero_fraction": self.zero_fraction, "eps_fraction": self.eps_fraction,
                "layers": [s.to_dict() for s in self.layers]}

    def __str__(self) -> str:
        lines = [f"MLP hidden activation: {self.zero_fraction:.2%} exact zeros, "
                 f"{self.eps_fraction:.2%} with |a| <= {self.eps:g}",
                 f"  {'layer':40s} {'zeros':>7s} {'|a|<=eps':>8s} {'tok p50':>8s} {'dead':>5s}"]
        for s in self.layers:
            lines.append(f"  {s.name:40s} {s.zero_fraction:7.2%} {s.eps_fraction:8.2%} "
                         f"{s.per_token_eps['p50']:8.2%} {s.dead_neurons:5d}")
        return "\n".join(lines)


class _SiteCounter:
    def __init__(self, site: MLPSite, eps: float) -> None:
        self.site, self.eps = site, eps
        self.hidden = site.hidden
        self.tokens = 0
        self.zeros = 0
        self.small = 0
        self.hist = torch.zeros(len(LOG10_EDGES) + 1, dtype=torch.long)  # [under, bins..., over]
        self.active = torch.zeros(self.hidden, dtype=torch.long)
        self.tok_zero: list[torch.Tensor] = []
        self.tok_eps: list[torch.Tensor] = []

    @torch.no_grad()
    def __call__(self, module: nn.Module, args: tuple) -> None:
        a = args[0].detach()
        a = a.reshape(-1, a.shape[-1])
        is_zero = a == 0
        small = a.abs() <= self.eps
        self.tokens += a.shape[0]
        self.zeros += int(is_zero.sum())
        self.small += int(small.sum())
        self.active += (~small).sum(0).cpu()
        self.tok_zero.append(is_zero.float().mean(1).cpu())
        self.tok_eps.append(small.float().mean(1).cpu())
        logs = a[~is_zero].abs().double().log10().cpu()
        self.hist += torch.bincount(torch.bucketize(logs, LOG10_EDGES, right=True), minlength=len(self.hist))

    def stats(self) -> LayerActivationStats:
        n = self.tokens * self.hidden
        hist = {"log10_edges": [float(e) for e in LOG10_EDGES], "counts": self.hist[1:-1].tolist(),
                "zeros": self.zeros, "below": int(self.hist[0]), "above": int(self.hist[-1])}
        tz = torch.cat(self.tok_zero) if self.tok_zero else torch.zeros(0)
        te = torch.cat(self.tok_eps) if self.tok_eps else torch.zeros(0)
        return LayerActivationStats(
            self.site.name, self.hidden, self.tokens, self.zeros / n if n else float("nan"),
            self.small / n if n else float("nan"), int((self.active == 0).sum()) if self.tokens else 0,
            _quantiles(tz), _quantiles(te), hist)


class ActivationMeter:
    """Counts zeros of the MLP hidden activation of ``model`` while it runs (a context manager).

    Example::

        with ActivationMeter(model, eps=1e-3) as meter:
            model(ids)
        print(meter.report())
    """

    def __init__(self, model: nn.Module, eps: float = 1e-3) -> None:
        if not eps >= 0:
            raise SparsecraftError(f"eps must be >= 0, got {eps}")
        self.model, self.eps = model, float(eps)
        self.sites = find_sites(model)
        self._handles: list[Any] = []
        self._counters: list[_SiteCounter] = []
        self.reset()

    def reset(self) -> None:
        """Forget what was counted (the hooks stay)."""
        self._counters = [_SiteCounter(s, self.eps) for s in self.sites]
        if self._handles:
            self.detach()
            self.attach()

    def attach(self) -> ActivationMeter:
        if not self._handles:
            self._handles = [s.projection.register_forward_pre_hook(c) for s, c in zip(self.sites, self._counters)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> ActivationMeter:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def report(self) -> ActivationReport:
        return ActivationReport(self.eps, [c.stats() for c in self._counters])


@torch.no_grad()
def measure(model: nn.Module, batches: Any, eps: float = 1e-3) -> ActivationReport:
    """Run ``model`` (eval mode) on every batch under a meter: an (n, L) tensor of token ids is
    split into batches of 4 windows; a list of batches is used as is (:func:`model_inputs`)."""
    if isinstance(batches, torch.Tensor):
        batches = [batches[i : i + 4] for i in range(0, len(batches), 4)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with ActivationMeter(model, eps) as meter:
            for b in batches:
                model(**model_inputs(model, b, device))
    finally:
        model.train(was_training)
    return meter.report()


def model_inputs(model: nn.Module, batch: Any, device: torch.device) -> dict[str, Any]:
    """Keyword arguments for one forward: a dict of tensors as is, token ids as ``input_ids``
    (``use_cache=False`` for causal LMs), anything else as the first positional input."""
    if isinstance(batch, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    config = getattr(model, "config", None)
    if config is None:
        return {"input": batch.to(device)}
    kw: dict[str, Any] = {"input_ids": batch.to(device)}
    if getattr(config, "use_cache", None) is not None and getattr(config, "is_decoder", True):
        kw["use_cache"] = False
    return kw
