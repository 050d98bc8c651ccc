"""Progressive sparsification (Sigma-MoE-Tiny, Hu et al. 2025, Sec. 3): the number of activated
experts per token as a schedule over training steps *and* layers.

Sigma-MoE-Tiny trains 96-expert top-1 layers; with the plain load-balancing loss the lowest layers
collapse (a few experts take most tokens). Its fix activates more experts in the lower layers at
first and switches to the target top-k later in training. The reference code (Microsoft's
``ltp-megatron-lm``) exposes this as a per-layer top-k list (``moe_router_topk_layer_wise``) that
is changed between training stages; here the same thing is one schedule object that the training
loop applies every step (:func:`apply_top_k`).

The spec uses the library's schedule axis (:func:`sparsecraft.schedules.make_schedule`), so every
layer's k is a number, a schedule dict or a list ([step, value] pairs or segment dicts):

* ``1`` -- top-1 in every layer, always;
* ``{"type": "linear", "initial": 4, "final": 1, "end": 1000}`` -- the same schedule in every layer;
* ``{"layers": {"0": [[0, 8], [5000, 1]], "1": [[0, 4], [5000, 1]], "default": 1}}`` -- per layer
  (MoE layers counted from 0 in model order; unlisted layers use ``default``, else the layer's
  configured top-k). :func:`sigma_moe_tiny` builds this form.

k(layer, step) is the schedule's value rounded to the nearest integer (halves up). Every value from
step 0 to ``total_steps`` must be in [1, n_experts]: a schedule that ends (or dips) below k = 1
or above the number of experts is refused when it is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.stats import moe_layers
from sparsecraft.schedules import Schedule, make_schedule

MAX_CHECKS = 20_000  #: validation evaluates at most this many evenly spaced steps per layer (plus the ends)


def _round(v: float) -> int:
    return int(math.floor(v + 0.5))


class TopKSchedule:
    """k(layer, step) for ``n_layers`` MoE layers of ``n_experts`` experts; see the module doc."""

    def __init__(self, spec: Any, n_layers: int, n_experts: int, total_steps: int,
                 default_k: Sequence[int] | int | None = None) -> None:
        self.spec, self.n_layers, self.n_experts, self.total_steps = spec, n_layers, n_experts, total_steps
        if isinstance(default_k, int) or default_k is None:
            default_k = [default_k] * n_layers  # type: ignore[list-item]
        layered = isinstance(spec, Mapping) and "layers" in spec
        if layered:
            extra = sorted(set(spec) - {"layers"})
            if extra:
                raise SparsecraftError(f"top-k schedule: unknown key(s) {', '.join(extra)} next to 'layers'")
            per = self._per_layer(spec["layers"], default_k)
        else:
            per = [spec] * n_layers
        self.schedules: list[Schedule] = []
        for i, s in enumerate(per):
            if s is None:
                raise SparsecraftError(f"top-k schedule: no schedule for MoE layer {i} and no 'default'")
            try:
                self.schedules.append(make_schedule(s))
            except SparsecraftError as e:
                raise SparsecraftError(f"top-k schedule of MoE layer {i}: {e}") from None
        self._validate()

    def _per_layer(self, layers: Any, default_k: Sequence[int | None]) -> list[Any]:
        if isinstance(layers, (list, tuple)):
            if len(layers) != self.n_layers:
                raise SparsecraftError(f"top-k schedule: 'layers' lists {len(layers)} schedules for "
                                       f"{self.n_layers} MoE layers")
            return list(layers)
        if not isinstance(layers, Mapping):
            raise SparsecraftError(f"top-k schedule: 'layers' must be a list or a mapping, got {layers!r}")
        out = []
        for key in layers:
            if key != "default" and not (str(key).isdigit() and int(key) < self.n_layers):
                raise SparsecraftError(f"top-k schedule: layer key {key!r} is not 'default' or a MoE layer "
                                       f"index in [0, {self.n_layers - 1}]")
        for i in range(self.n_layers):
            spec = layers.get(str(i), layers.get(i))  # type: ignore[call-overload]
            out.append(spec if spec is not None else layers.get("default", default_k[i]))
        return out

    def _validate(self) -> None:
        stride = max(1, self.total_steps // MAX_CHECKS)
        steps = [self.total_steps, *range(0, self.total_steps, stride)]  # the end first: "ends below k=1"
        for i, sched in enumerate(self.schedules):
            for t in steps:
                v = sched(t)
                k = _round(v) if math.isfinite(v) else 0
                if not 1 <= k <= self.n_experts:
                    where = f"ends (step {t}) at" if t == self.total_steps else f"is at step {t}"
                    raise SparsecraftError(
                        f"top-k schedule of MoE layer {i} {where} {v:g}, which rounds to k={k}; k must stay in "
                        f"[1, n_experts={self.n_experts}]"
                    )

    def k(self, layer: int, step: int) -> int:
        return _round(self.schedules[layer](step))

    def ks(self, step: int) -> list[int]:
        """k of every MoE layer at ``step``."""
        return [self.k(i, step) for i in range(self.n_layers)]


def for_model(spec: Any, model: nn.Module, total_steps: int) -> TopKSchedule:
    """A :class:`TopKSchedule` for the MoE layers of ``model`` (their current top-k is the default)."""
    layers = [m for _, m in moe_layers(model)]
    if not layers:
        raise SparsecraftError("a top-k schedule needs a model with MoE layers (ffn: moe)")
    sizes = {m.n_experts for m in layers}
    if len(sizes) != 1:
        raise SparsecraftError(f"a top-k schedule needs MoE layers of one size, got expert counts {sorted(sizes)}")
    return TopKSchedule(spec, len(layers), sizes.pop(), total_steps, [m.top_k for m in layers])


def apply_top_k(model: nn.Module, schedule: TopKSchedule, step: int) -> list[int]:
    """Set every MoE layer's top-k to the schedule's value at ``step``; returns the k's."""
    ks = schedule.ks(step)
    for (_, m), k in zip(moe_layers(model), ks):
        m.router.set_top_k(k)
    return ks


def sigma_moe_tiny(n_layers: int, switch_step: int, target_k: int = 1,
                   initial: Sequence[int] = (8, 8, 6, 6, 4, 4, 2, 2)) -> dict[str, Any]:
    """The per-layer spec of Sigma-MoE-Tiny's progressive sparsification: layer i < len(initial)
    starts at ``initial[i]`` experts and switches to ``target_k`` at ``switch_step``; the other
    layers use ``target_k`` throughout. (The default ``initial`` is our reading of the report's
    first-stage setting for its lowest 8 layers; scale it to the model at hand.)"""
    layers: dict[str, Any] = {"default": target_k}
    for i, k in enumerate(initial[:n_layers]):
        layers[str(i)] = [[0, k], [switch_step, target_k]] if k != target_k else target_k
    return {"layers": layers}
