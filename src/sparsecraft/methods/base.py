"""The training lifecycle every sparse-training method shares.

Lifecycle (what the base class does; hooks a method overrides are in brackets)::

    method = METHODS.get(name)(model, optimizer, total_steps=T, sparsity=0.9, ...)
    method.attach()                  # [initial_masks()] -> hard masks set, optimizer state zeroed
    for batch in data:
        loss = method.regularize(loss_fn(model, batch), inputs=x, outputs=y_hat)   # optional
        loss.backward()
        optimizer.step()             # pre-hook:  before_optimizer_step()
                                     #   captures dense grads on update steps [needs_dense_grad],
                                     #   [modify_gradients()], masks gradients (hard masks)
                                     # post-hook: after_optimizer_step()
                                     #   re-zeroes pruned weights, step += 1, [post_step()],
                                     #   on UpdateRule steps: [compute_masks(step)] -> new masks,
                                     #   dropped/grown logged, optimizer state fixed
    method.finalize()                # [finalize()]: make zeros permanent / hard-mask phase

With an optimizer and ``hooks=True`` (default) nothing else is called in the loop; without hooks call
``method.step()`` once after ``optimizer.step()`` (it then also zeroes the state of pruned weights, since their
gradients were not masked before the step). ``optimizer.step(closure)`` and [``skip_optimizer_step()``] (RigL):
see :mod:`~.step_hooks`. One method per optimizer and per weight (:mod:`~.ownership`). ``load_state_dict`` re-applies
the hard masks while attached. Under FSDP2, masks are DTensor shards (:mod:`sparsecraft.distributed.fsdp`).

Hard vs soft masks: ``hard_masks = True`` methods (static, gmp, imp, set, rigl) zero pruned weights in place. N:M
straight-through methods set ``hard_masks = False``: the dense weight is trained and forward uses
:meth:`forward_weight` (default ``W * E``), installed with :func:`~.forward.patch_forward` so reports stay true.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from sparsecraft.analysis.mask_dynamics import MaskDynamics
from sparsecraft.criteria import LossFn, make_criterion
from sparsecraft.distributed import fsdp
from sparsecraft.distributions import make_distribution
from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import MASK_SUFFIX, MaskMeta, keep_bits, set_mask, zero_pruned_
from sparsecraft.methods.distributed import sync_masks
from sparsecraft.methods.forward import patch_forward, unpatch_forward
from sparsecraft.methods.optimizer_state import mask_state, reset_state
from sparsecraft.methods.ownership import claim, release
from sparsecraft.methods.step_hooks import StepHooks
from sparsecraft.patterns import parse_pattern
from sparsecraft.pruning import decide_masks
from sparsecraft.registry import Registry
from sparsecraft.schedules import UpdateRule, make_schedule
from sparsecraft.targets import Target, find_targets

METHODS: Registry[type[SparseMethod]] = Registry("method", package="sparsecraft.methods")

#: optimizers whose update of a weight with zero gradient, zero state and zero value is exactly
#: zero (element-wise rules, incl. coupled/decoupled weight decay): masking the gradient before
#: the step is enough, so the weights need no re-zeroing after it (saves a pass per step).
EXACT_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad,
    torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam,
)  # fmt: skip


def resolve_step(value: int | float | None, total_steps: int) -> int | None:
    """An int is a step; a float in [0, 1] is a fraction of ``total_steps``; None stays None."""
    if value is None:
        return None
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise SparsecraftError(f"a step fraction must be in [0, 1], got {value}")
        return int(round(value * total_steps))
    return int(value)


def make_update_rule(spec: Any, total_steps: int, defaults: Mapping[str, Any]) -> UpdateRule:
    """UpdateRule from ``{"every", "start", "stop"}`` (start/stop as steps or fractions)."""
    if isinstance(spec, UpdateRule):
        return spec
    spec = {**defaults, **(spec or {})}
    unknown = set(spec) - {"every", "start", "stop"}
    if unknown:
        raise SparsecraftError(f"unknown update keys {sorted(unknown)}; allowed: every, start, stop")
    return UpdateRule(
        every=int(spec["every"]),
        start=resolve_step(spec["start"], total_steps) or 0,
        stop=resolve_step(spec["stop"], total_steps),
    )


class SparseMethod(StepHooks):
    """Base class of the sparse-training methods (see the module docstring for the lifecycle)."""

    hard_masks: ClassVar[bool] = True
    needs_dense_grad: ClassVar[bool] = False
    default_update: ClassVar[dict[str, Any]] = {"every": 1, "start": 0, "stop": None}
    default_distribution: ClassVar[Any] = "erk"
    default_criterion: ClassVar[Any] = "magnitude"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        total_steps: int,
        sparsity: Any = 0.9,
        pattern: Any = "unstructured",
        distribution: Any = None,
        criterion: Any = None,
        targets: list[str] | None = None,
        ignore: list[str] | None = None,
        update: Mapping[str, Any] | UpdateRule | None = None,
        seed: int = 0,
        calib: Iterable[Any] | None = None,
        loss_fn: LossFn | None = None,
        hooks: bool = True,
    ) -> None:
        if int(total_steps) < 1:
            raise SparsecraftError(f"total_steps must be >= 1, got {total_steps}")
        self.model, self.optimizer = model, optimizer
        self.total_steps = int(total_steps)
        self.sparsity = make_schedule(sparsity)
        self.pattern = parse_pattern(pattern)
        self.distribution = make_distribution(distribution or self.default_distribution)
        self.criterion = make_criterion(criterion or self.default_criterion)
        self.targets: list[Target] = find_targets(model, targets=targets, ignore=ignore)
        if not self.targets:
            raise SparsecraftError("no prunable layer found (Linear, Conv1d/2d/3d or GPT-2 Conv1D)")
        self.update_rule = make_update_rule(update, self.total_steps, self.default_update)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.calib, self.loss_fn = calib, loss_fn
        self.use_hooks = hooks and optimizer is not None
        self.step_count = 0
        self.dynamics = MaskDynamics()
        self._dense_grads: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._bits: dict[str, tuple[torch.Tensor, int, torch.dtype, torch.Tensor | None]] = {}
        self._grads_masked = False
        self._stashed_grads: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.skipped_steps = 0
        self._attached = False

    # ----------------------------------------------------------------- names and masks
    @property
    def name(self) -> str:
        return getattr(type(self), "registry_name", type(self).__name__.lower())

    def mask(self, target: Target) -> torch.Tensor:
        return getattr(target.module, target.param_name + MASK_SUFFIX)

    def masks(self) -> dict[str, torch.Tensor]:
        """Current keep-masks by target name (the live buffers)."""
        return {t.name: self.mask(t) for t in self.targets}

    def target_sparsity(self, step: int | None = None) -> float:
        return float(self.sparsity(self.step_count if step is None else step))

    def plan(self, sparsity: float, criterion: Any = None) -> dict[str, torch.Tensor]:
        """Keep-masks for ``sparsity`` from a criterion + the distribution + the pattern."""
        crit = make_criterion(criterion) if criterion is not None else self.criterion
        crit.prepare(self.model, self.targets, data=self.calib, loss_fn=self.loss_fn)
        if fsdp.any_sharded(self.targets):  # FSDP2: decide on each gathered layer
            return fsdp.plan_gathered(self.targets, sparsity, self.pattern, crit, self.distribution)
        planned = decide_masks(self.targets, sparsity, self.pattern, crit, self.distribution)
        return {name: keep for name, (_, _, _, keep) in planned.items()}

    # ----------------------------------------------------------------- hooks to override
    def initial_masks(self) -> dict[str, torch.Tensor]:
        """Masks at attach time; default: the criterion at the schedule's step-0 sparsity."""
        return self.plan(self.target_sparsity(0))

    def compute_masks(self, step: int) -> dict[str, torch.Tensor] | None:
        """New masks on an update step (None = no change)."""
        return None

    def modify_gradients(self) -> None:
        """Change ``param.grad`` before the optimizer step (SR-STE, MaskSparsity, ...)."""

    def post_step(self) -> None:
        """After every optimizer step, before mask updates (ISS-P shrinkage, prox steps)."""

    def forward_weight(self, target: Target) -> torch.Tensor:
        """Soft-mask methods: the weight forward uses (differentiable in the dense weight)."""
        return target.param * self.mask(target)

    def skip_optimizer_step(self) -> bool:
        """True: the coming optimizer step must not update anything (default: never). Asked in
        the pre-step hook after the gradient work; needs that hook (``hooks=True`` or a
        framework callback calling :meth:`before_optimizer_step`)."""
        return False

    def regularize(self, loss: torch.Tensor, **context: Any) -> torch.Tensor:
        """Add a method's loss term (group lasso, distillation); default: ``loss`` unchanged."""
        return loss

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Method-specific (tensors, JSON) to checkpoint; default: criterion accumulators."""
        tensors = {f"grad_sums.{k}": v for k, v in self.criterion.grad_sums.items()}
        tensors.update({f"movement.{k}": v for k, v in self.criterion.movement.items()})
        return tensors, {}

    def load_extra_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        for key, value in tensors.items():
            kind, _, name = key.partition(".")
            if kind == "grad_sums":
                self.criterion.grad_sums[name] = value.clone()
            elif kind == "movement":
                self.criterion.movement[name] = value.clone()

    # ----------------------------------------------------------------- lifecycle
    def attach(self) -> SparseMethod:
        """Set the initial masks (zeroing pruned weights and their optimizer state) and hook
        the optimizer and the model's ``load_state_dict``. Returns ``self``."""
        if self._attached:
            raise SparsecraftError(f"method {self.name!r} is already attached")
        self._claim()
        try:
            self._set_masks(self.initial_masks())
        except Exception:
            release(self)
            raise
        self.dynamics.start({k: fsdp.full(v) for k, v in self.masks().items()})
        for t in self.targets:
            if not self.hard_masks:  # every module sharing the tensor uses the forward weight
                for module in t.modules:
                    patch_forward(module, lambda t=t: self.forward_weight(t), t.param_name)
            for module in t.modules:
                self._handles.append(module.register_load_state_dict_post_hook(
                    lambda _module, _keys, t=t: self._after_load(t)))
        if self.use_hooks:
            assert self.optimizer is not None
            self._handles += [
                self.optimizer.register_step_pre_hook(self._pre_step_hook),
                self.optimizer.register_step_post_hook(lambda *_: self.after_optimizer_step()),
            ]
        self._attached = True
        return self

    def _claim(self) -> None:
        """Refuse (touching no mask) if another attached method owns the optimizer or a weight; else claim them."""
        claim(self, self.optimizer, [t.param for t in self.targets], [t.name for t in self.targets])

    def detach(self) -> None:
        """Remove the optimizer and load hooks and the forward patches (masks stay)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for t in self.targets:
            for module in t.modules:
                unpatch_forward(module, t.param_name)
        release(self)
        self._attached = False

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Gradients ready, update not done: capture, modify and mask the gradients."""
        if self.needs_dense_grad and self.update_rule.should_update(self.step_count + 1):
            self._capture_grads()
        self.modify_gradients()
        if self.hard_masks:
            for t in self.targets:
                if (g := t.param.grad) is not None:  # where, not multiply: inf * 0 would be NaN
                    zero_pruned_(fsdp.local(g), fsdp.local(self.mask(t)), self._keep_bits(t, g.dtype))
            self._grads_masked = True
        if self.optimizer is not None and self.skip_optimizer_step():
            self._stash_grads()

    def step(self) -> dict[str, Any] | None:
        """Call once after ``optimizer.step()`` when hooks are off; a no-op with hooks."""
        if self.use_hooks:
            return None
        if self.needs_dense_grad and self.update_rule.should_update(self.step_count + 1):
            self._capture_grads()
        if self.optimizer is not None and self.hard_masks:
            for t in self.targets:
                mask_state(self.optimizer, t.param, self.mask(t))
        return self.after_optimizer_step()

    @torch.no_grad()
    def after_optimizer_step(self) -> dict[str, Any] | None:
        """Advance one step; update masks when the UpdateRule says so. Returns the dynamics
        entry of an update, else None."""
        if self._restore_grads():
            self.skipped_steps += 1
        if not (self._grads_masked and isinstance(self.optimizer, EXACT_OPTIMIZERS)):
            self._reapply()
        self._grads_masked = False
        self.step_count += 1
        self.post_step()
        entry = None
        if self.update_rule.should_update(self.step_count):
            new = self.compute_masks(self.step_count)
            if new is not None:
                entry = self._set_masks(new, record=True)
        self._dense_grads.clear()
        return entry

    def finalize(self) -> None:
        """End of training: remove hooks; soft-mask methods write W*E into W (hard masks)."""
        if not self.hard_masks:
            with torch.no_grad():
                for t in self.targets:
                    t.param.mul_(self.mask(t))
        self.detach()
        self._reapply()

    # ----------------------------------------------------------------- internals
    def _capture_grads(self) -> None:
        for t in self.targets:
            if t.param.grad is not None:
                self._dense_grads[t.name] = t.param.grad.detach().clone()

    @torch.no_grad()
    def _reapply(self) -> None:
        if self.hard_masks:
            for t in self.targets:
                zero_pruned_(fsdp.local(t.param.data), fsdp.local(self.mask(t)), self._keep_bits(t, t.param.dtype))

    def _keep_bits(self, target: Target, dtype: torch.dtype) -> torch.Tensor | None:
        """:func:`~sparsecraft.masks.keep_bits` of the mask's local shard, cached on the buffer: a write to a
        DTensor mask bumps the DTensor's version, not its shard's (which ``to_local()`` may return as is)."""
        buf, hit = self.mask(target), self._bits.get(target.name)
        if hit is None or hit[0] is not buf or hit[1] != buf._version or hit[2] != dtype:
            hit = (buf, buf._version, dtype, keep_bits(fsdp.local(buf), dtype))
            self._bits[target.name] = hit
        return hit[3]

    @torch.no_grad()
    def _after_load(self, target: Target) -> None:
        """``load_state_dict`` post-hook: loaded (e.g. dense) weights get the hard mask back,
        and the optimizer state of pruned positions stays zero."""
        if not self.hard_masks:
            return  # soft masks: forward recomputes W * E from the loaded dense weight
        keep = self.mask(target)
        target.param.data.masked_fill_(~keep, 0)
        if self.optimizer is not None:
            mask_state(self.optimizer, target.param, keep)

    @torch.no_grad()
    def _set_masks(self, new: Mapping[str, torch.Tensor], record: bool = False) -> dict[str, Any] | None:
        new = sync_masks(dict(new))
        old = {k: v.clone() for k, v in self.masks().items() if k in new} if record else {}
        for t in self.targets:
            if t.name not in new:
                continue
            keep = new[t.name].to(torch.bool)
            # the layer's own target (its share of the distribution), not the model total
            layer_target = 1.0 - int(fsdp.full(keep).sum()) / keep.numel()
            keep = fsdp.shard_like(keep, t.param)  # FSDP2: this rank's rows of the mask
            meta = MaskMeta(self.pattern.spec(), layer_target, self.name, self.step_count)
            if record and self.hard_masks:  # grown weights start at 0 (already 0 when hard)
                t.param.masked_fill_(keep & ~old[t.name], 0)
            set_mask(t.module, keep, t.param_name, meta, apply=self.hard_masks)
            if self.optimizer is not None and self.hard_masks:
                mask_state(self.optimizer, t.param, keep)
                if record:  # only a weight regrown from zero starts afresh (RigL); a soft-masked
                    # weight entering the mask was trained densely all along: its state stays
                    reset_state(self.optimizer, t.param, keep & ~old[t.name])
        if not record:
            return None
        now, full = self.masks(), fsdp.full  # FSDP2: the dynamics count whole layers
        return self.dynamics.record(self.step_count, {k: full(v) for k, v in old.items()},
                                    {k: full(now[k]) for k in old}, sparsity=self.target_sparsity())

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """{"tensors": {...}, "meta": {...}}: step, RNG, masks, dynamics, method extras."""
        extra_t, extra_m = self.extra_state()
        tensors = {"rng": self.generator.get_state()}
        tensors.update({f"mask.{k}": v.detach().cpu().clone() for k, v in self.masks().items()})
        tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in extra_t.items()})
        tensors.update({f"initial.{k}": v for k, v in self.dynamics.initial.items()})
        meta = {
            "method": self.name,
            "step": self.step_count,
            "seed": self.seed,
            "dynamics": self.dynamics.to_json(),
            "extra": extra_m,
        }
        return {"tensors": tensors, "meta": json.loads(json.dumps(meta))}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        tensors, meta = state["tensors"], state["meta"]
        if meta.get("method") != self.name:
            raise SparsecraftError(f"state is for method {meta.get('method')!r}, not {self.name!r}")
        self.step_count = int(meta["step"])
        self.generator.set_state(tensors["rng"])
        masks = {k[5:]: v for k, v in tensors.items() if k.startswith("mask.")}
        missing = [t.name for t in self.targets if t.name not in masks]
        if missing:
            raise SparsecraftError(f"method state has no mask for {missing[:3]}")
        self._set_masks(masks)
        self.dynamics.initial = {k[8:]: v.clone() for k, v in tensors.items() if k.startswith("initial.")}
        self.dynamics.load_json(meta.get("dynamics", []))
        self.load_extra_state({k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}, meta.get("extra", {}))

