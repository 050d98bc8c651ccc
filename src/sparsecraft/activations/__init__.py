"""Activation sparsity: measure it, enforce it, choose it, and run on it.

* :class:`ActivationMeter` / :func:`measure` -- exact zeros, ``|a| <= eps``, histograms and
  per-token statistics of the MLP hidden activation of every layer (Lazy Neuron);
* transforms (``TRANSFORMS``, one module each): ``topk`` (keep the k largest per token),
  ``relu`` (ReLU-fication, optionally shifted), ``threshold`` (per-layer neuron-norm thresholds);
  :func:`apply_transform`, :func:`unwrap`, :func:`restore`;
* CETT and PPL-p% (Sparsing Law): :func:`cett_curve` (exact per-layer step function),
  :func:`cett_tables` (from the dense model's calibration activations), :func:`ppl_p` (bisection
  of the global budget for a p% perplexity rise);
* :func:`sparsecraft.kernels.convert` installs the activation-sparse down-projection kernel on
  top-k / threshold layers (backend ``act-sparse``).
"""

from sparsecraft.activations.base import (
    TRANSFORMS,
    ActivationRule,
    ActivationTransform,
    SparseActivation,
    apply_transform,
    restore,
    unwrap,
)
from sparsecraft.activations.calibrate import cett_tables
from sparsecraft.activations.cett import CettCurve, CettTable, cett_curve
from sparsecraft.activations.meter import ActivationMeter, ActivationReport, LayerActivationStats, measure
from sparsecraft.activations.relufy import ReLUfication, ShiftedReLU
from sparsecraft.activations.search import CettSearch, PplPResult, apply_cett, ppl_p, search_cett
from sparsecraft.activations.sites import MLPSite, find_sites
from sparsecraft.activations.threshold import Threshold, ThresholdRule, thresholds_of
from sparsecraft.activations.topk import TopK, TopKRule

__all__ = [
    "TRANSFORMS",
    "ActivationMeter",
    "ActivationReport",
    "ActivationRule",
    "ActivationTransform",
    "CettCurve",
    "CettSearch",
    "CettTable",
    "LayerActivationStats",
    "MLPSite",
    "PplPResult",
    "ReLUfication",
    "ShiftedReLU",
    "SparseActivation",
    "Threshold",
    "ThresholdRule",
    "TopK",
    "TopKRule",
    "apply_cett",
    "apply_transform",
    "cett_curve",
    "cett_tables",
    "find_sites",
    "measure",
    "ppl_p",
    "restore",
    "search_cett",
    "thresholds_of",
    "unwrap",
]
