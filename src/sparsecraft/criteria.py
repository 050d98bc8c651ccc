"""Criteria: score every weight of a target, higher = keep.

* ``magnitude``: |w|.
* ``random``: uniform noise from a seeded generator (seed per criterion, stable per layer).
* ``saliency``: |w * g| with g the loss gradient summed over the batches given (SNIP,
  Lee et al. 2019, "connection sensitivity" |dL/dc| = |g * w|).
* ``movement``: -w * sum_t g_t, accumulated (Sanh et al. 2020, movement pruning S = -sum w g).
  One-shot: the sum runs over the batches given; during training a method calls
  :meth:`Criterion.observe` after every backward.
* ``gradient``: |sum_t g_t| (RigL's regrowth score, Evci et al. 2020).
* ``wanda``: |W_ij| * ||X_j||_2 with X the layer's calibration inputs (Sun et al. 2024, Eq. 1),
  compared within each output row. It needs activations, so :func:`sparsecraft.prune` runs it
  block by block on calibration data (``calib=``) and hands each layer's input norms to
  :meth:`Wanda.set_input_norms`.

Criteria that need gradients require ``data`` (an iterable of batches) and use ``loss_fn``
(default: cross-entropy of ``model(x)`` against ``y`` for ``(x, y)`` batches, or the ``loss``
attribute of the model output).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.registry import Registry
from sparsecraft.targets import Target

CRITERIA: Registry[type[Criterion]] = Registry("criterion", title="criteria")

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy for (inputs, labels) batches; the model's own ``.loss`` for dict batches
    (e.g. Hugging Face models called with ``labels``)."""
    if isinstance(batch, dict):
        out = model(**batch)
        loss = getattr(out, "loss", None)
        if loss is None:
            raise SparsecraftError("the model output has no .loss; pass loss_fn=...")
        return loss
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        return F.cross_entropy(model(x), y)
    raise SparsecraftError("cannot compute a loss for this batch; pass (inputs, labels) batches or loss_fn=...")


class Criterion:
    """Base class: override :meth:`score`; gradient criteria also set ``needs_gradients``,
    activation criteria ``needs_activations`` (and may set ``group = "row"``: the comparison
    group an unstructured pattern uses, as Wanda's per-output-row ranking)."""

    needs_gradients = False
    needs_activations = False
    group: str | None = None

    def __init__(self) -> None:
        self.grad_sums: dict[str, torch.Tensor] = {}
        self.movement: dict[str, torch.Tensor] = {}

    def prepare(
        self,
        model: nn.Module,
        targets: Sequence[Target],
        data: Iterable[Any] | None = None,
        loss_fn: LossFn | None = None,
    ) -> None:
        """Gather what :meth:`score` needs (gradients over ``data``)."""
        if not self.needs_gradients:
            return
        if data is None:
            raise SparsecraftError(
                f"criterion {self.registry_name!r} needs data: pass a few batches "  # type: ignore[attr-defined]
                "(data=[...]) to compute gradients"
            )
        loss_fn = loss_fn or default_loss
        was_training = model.training
        model.eval()
        params = [t.param for t in targets]
        saved = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        n = 0
        for batch in data:
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            for t in targets:
                self.observe(t, t.param.grad)
            n += 1
        if n == 0:
            raise SparsecraftError("the data given for gradient scores is empty")
        model.zero_grad(set_to_none=True)
        for p, s in zip(params, saved):
            p.requires_grad_(s)
        model.train(was_training)

    def observe(self, target: Target, grad: torch.Tensor | None) -> None:
        """Accumulate one step's gradient of ``target`` (training methods call this)."""
        if grad is None:
            return
        g = grad.detach().float()
        if target.name in self.grad_sums:
            self.grad_sums[target.name] += g
            self.movement[target.name] -= target.param.detach().float() * g
        else:
            self.grad_sums[target.name] = g.clone()
            self.movement[target.name] = -target.param.detach().float() * g

    def _grad(self, target: Target) -> torch.Tensor:
        if target.name not in self.grad_sums:
            raise SparsecraftError(f"no gradient was collected for {target.name!r}")
        return self.grad_sums[target.name]

    def score(self, target: Target) -> torch.Tensor:
        raise NotImplementedError


@CRITERIA.register("magnitude")
class Magnitude(Criterion):
    """|w|: the smallest weights go first (Han et al. 2015; Zhu & Gupta 2017)."""

    def score(self, target: Target) -> torch.Tensor:
        return target.param.detach().abs().float()


@CRITERIA.register("random")
class RandomScore(Criterion):
    """Seeded uniform random scores: random pruning (Liu et al. 2022)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    def score(self, target: Target) -> torch.Tensor:
        # a per-layer seed derived from the name keeps a layer's scores independent of order
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(target.name.encode()))
        return torch.rand(target.shape, generator=gen)


@CRITERIA.register("saliency")
class Saliency(Criterion):
    """|w * g| with g summed over the given batches (SNIP connection sensitivity)."""

    needs_gradients = True

    def score(self, target: Target) -> torch.Tensor:
        return (target.param.detach().float() * self._grad(target)).abs()


@CRITERIA.register("movement")
class Movement(Criterion):
    """-sum_t w_t * g_t: weights moving away from zero are kept (movement pruning)."""

    needs_gradients = True

    def score(self, target: Target) -> torch.Tensor:
        if target.name not in self.movement:
            raise SparsecraftError(f"no gradient was collected for {target.name!r}")
        return self.movement[target.name]


@CRITERIA.register("gradient")
class GradientMagnitude(Criterion):
    """|sum_t g_t|: the dense-gradient magnitude RigL uses to regrow connections."""

    needs_gradients = True

    def score(self, target: Target) -> torch.Tensor:
        return self._grad(target).abs()


def wanda_scores(w: torch.Tensor, col_norms: torch.Tensor) -> torch.Tensor:
    """|W| * ||X_j||_2 broadcast over the rows of the (out, in) matrix (Wanda, Eq. 1)."""
    return w.abs().float() * col_norms.float().reshape(1, -1)


@CRITERIA.register("wanda")
class Wanda(Criterion):
    """|W_ij| * ||X_j||_2 over calibration inputs, ranked within each output row (Wanda)."""

    needs_activations = True
    group = "row"

    def __init__(self) -> None:
        super().__init__()
        self.input_norms: dict[str, torch.Tensor] = {}

    def set_input_norms(self, target: Target, norms: torch.Tensor) -> None:
        """||X_j||_2 of every input feature j of ``target`` (from the calibration pass)."""
        if norms.numel() != target.layout.cols:
            raise SparsecraftError(
                f"{target.name}: {norms.numel()} input norms for a weight with {target.layout.cols} inputs"
            )
        self.input_norms[target.name] = norms.detach().float().reshape(-1)

    def score(self, target: Target) -> torch.Tensor:
        if target.name not in self.input_norms:
            raise SparsecraftError(
                f"criterion 'wanda' has no calibration activations for {target.name!r}: "
                "prune with calib=... (sparsecraft.prune runs it block by block)"
            )
        layout = target.layout
        return layout.from_rows(wanda_scores(layout.to_rows(target.param.detach()), self.input_norms[target.name]))


def make_criterion(spec: Any) -> Criterion:
    """A criterion from a name, a dict ``{"type": ..., **kwargs}`` or an instance."""
    return spec if isinstance(spec, Criterion) else CRITERIA.build(spec)
