"""Neuron-norm thresholding (Sparsing Law, Luo et al. 2024): zero ``a_i`` when its neuron norm
``n_i = |a_i| * ||W_down[:, i]||`` is at most the layer's threshold ``t``.

This is the rule whose per-layer thresholds CETT chooses (:mod:`sparsecraft.activations.cett`);
in forward it leaves exact zeros (``masked_fill``), and it computes ``n_i`` with the same
float32 operations as the calibration, so a token seen there is thresholded exactly as
calibrated. ``t = 0`` zeroes nothing that is not already zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from sparsecraft.activations.base import TRANSFORMS, ActivationRule, ActivationTransform, SparseActivation, wrap_site
from sparsecraft.activations.sites import MLPSite, find_sites
from sparsecraft.errors import SparsecraftError


def column_norms(w_down: torch.Tensor) -> torch.Tensor:
    """``||W_down[:, i]||`` for every neuron ``i`` of an (out, hidden) weight, float32."""
    return w_down.detach().float().norm(dim=0)


def neuron_norms(a: torch.Tensor, colnorm: torch.Tensor) -> torch.Tensor:
    """``n_i = |a_i| * ||W_down[:, i]||`` (float32; the one formula calibration and forward share)."""
    return a.detach().float().abs() * colnorm


class ThresholdRule(ActivationRule):
    """Zero the entries with ``|a_i| * ||W_down[:, i]|| <= threshold``."""

    def __init__(self, threshold: float, colnorm: torch.Tensor, expected: float | None = None) -> None:
        super().__init__()
        self.register_buffer("colnorm", colnorm.detach().float().clone())
        self.threshold = check_threshold(threshold)
        self.expected = expected

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            drop = neuron_norms(a, self.colnorm.to(a.device)) <= self.threshold
        return a.masked_fill(drop, 0)

    def expected_sparsity(self) -> float | None:
        return self.expected

    def extra_repr(self) -> str:
        return f"threshold={self.threshold:.6g}, hidden={self.colnorm.numel()}"


def check_threshold(t: object) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise SparsecraftError(f"activation threshold must be a finite number >= 0, got {t!r}")
    return float(t)


@TRANSFORMS.register("threshold")
class Threshold(ActivationTransform):
    """Per-layer neuron-norm thresholds (CETT / PPL-p%): zero a_i when |a_i|*||W_down[:, i]|| <= t_l."""

    def __init__(self, thresholds: Sequence[float], expected: Sequence[float] | None = None) -> None:
        self.thresholds = [check_threshold(t) for t in thresholds]
        self.expected = list(expected) if expected is not None else None
        if self.expected is not None and len(self.expected) != len(self.thresholds):
            raise SparsecraftError(f"{len(self.expected)} expected sparsities for {len(self.thresholds)} thresholds")

    def apply(self, model: nn.Module) -> list[MLPSite]:
        sites = find_sites(model)
        if len(sites) != len(self.thresholds):
            raise SparsecraftError(
                f"{len(self.thresholds)} thresholds for a model with {len(sites)} MLP layers; give one per layer"
            )
        for i, (site, t) in enumerate(zip(sites, self.thresholds)):
            exp = self.expected[i] if self.expected is not None else None
            wrap_site(site, ThresholdRule(t, column_norms(site.down_weight()), exp))
        return sites

    def to_dict(self) -> dict:
        return {"type": "threshold", "thresholds": self.thresholds}


def thresholds_of(model: nn.Module) -> list[float | None]:
    """The threshold of every MLP site (None where no threshold rule is installed)."""
    out: list[float | None] = []
    for site in find_sites(model):
        w = site.wrapper
        out.append(w.rule.threshold if isinstance(w, SparseActivation) and isinstance(w.rule, ThresholdRule)
                   else None)
    return out
