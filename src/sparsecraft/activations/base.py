"""Activation transforms: the registry, the wrapper that applies a rule in forward, and restore.

A *rule* (:class:`ActivationRule`) maps the MLP hidden activation ``a`` (..., hidden) of one
site to a sparser one with exact zeros (top-k per token, a CETT threshold). It is applied by
:class:`SparseActivation`, which takes the down projection's slot: ``forward(x) =
inner(rule(x))``, so the projection (and a meter hooked on it) sees the sparse activation and
:func:`sparsecraft.kernels.convert` can swap ``inner`` for a kernel that reads only the weight
columns of nonzero activations. Other transforms change the activation function itself
(ReLU-fication). Every transform is one registered class in its own module of this package
(``TRANSFORMS``, discovered on first lookup); :func:`apply_transform` builds one by name and
:func:`restore` undoes all of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.activations.sites import MLPSite, find_sites
from sparsecraft.registry import Registry


class ActivationRule(nn.Module):
    """Maps a hidden activation to a sparser one (exact zeros), differentiable for the kept entries."""

    def expected_sparsity(self) -> float | None:
        """Fraction of exact zeros the rule is expected to leave (None: unknown)."""
        return None


class SparseActivation(nn.Module):
    """``inner(rule(x))``: the down projection ``inner`` fed the rule's sparse activation.

    ``sparsecraft_input_sparsity`` is the protocol :func:`sparsecraft.kernels.convert` reads:
    the expected fraction of exact zeros in the input of the child ``inner``."""

    def __init__(self, rule: ActivationRule, inner: nn.Module) -> None:
        super().__init__()
        self.rule = rule
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.rule(x))

    @property
    def sparsecraft_input_sparsity(self) -> float | None:
        return self.rule.expected_sparsity()

    def extra_repr(self) -> str:
        return f"rule={type(self.rule).__name__}"


class ActivationTransform:
    """Base of the registered transforms: ``apply(model)`` changes every MLP site in place and
    returns the sites it changed."""

    def apply(self, model: nn.Module) -> list[MLPSite]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"type": getattr(self, "registry_name", type(self).__name__)}


TRANSFORMS: Registry[type[ActivationTransform]] = Registry("activation transform",
                                                           package="sparsecraft.activations")


def wrap_site(site: MLPSite, rule: ActivationRule) -> SparseActivation:
    """Put ``rule`` in front of the site's down projection (replacing an earlier rule)."""
    wrapper = SparseActivation(rule, site.projection)
    setattr(site.parent, site.attr, wrapper)
    return wrapper


def apply_transform(model: nn.Module, spec: str | dict[str, Any], **kwargs: Any) -> list[MLPSite]:
    """Build the transform ``spec`` (a name plus ``kwargs``, or ``{"type": name, ...}``) and apply it."""
    if isinstance(spec, str):
        spec = {"type": spec, **kwargs}
    elif kwargs:
        spec = {**spec, **kwargs}
    return TRANSFORMS.build(spec).apply(model)


def unwrap(model: nn.Module) -> int:
    """Remove every rule (top-k, thresholds) in front of a down projection; the activation
    functions stay as they are. Returns the number of sites changed."""
    changed = 0
    for site in find_sites(model):
        if site.wrapper is not None:
            setattr(site.parent, site.attr, site.projection)
            changed += 1
    return changed


def restore(model: nn.Module) -> int:
    """Undo every activation transform of ``model`` (unwrap rules, put back replaced activation
    functions); returns the number of sites changed."""
    changed = unwrap(model)
    for site in find_sites(model):
        original = getattr(site.activation, "original", None)
        if original is not None:
            setattr(site.act_parent, site.act_attr, original)
            changed += 1
    return changed
