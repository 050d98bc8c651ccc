"""Where the MLP hidden activation of a model lives: one :class:`MLPSite` per MLP.

The *MLP hidden activation* is the vector the down projection reads (Lazy Neuron, Li et al.
2023; Sparsing Law, Luo et al. 2024):

* gated MLPs (Llama, Qwen2/3, Mistral, Gemma, ...: ``gate_proj``/``up_proj``/``down_proj``/
  ``act_fn``): ``a = act(gate(x)) * up(x)``, the input of ``down_proj``;
* plain MLPs: the post-activation ``a = act(fc(x))``, the input of the second projection --
  GPT-2 (``mlp.c_fc``/``mlp.act``/``mlp.c_proj``, ``Conv1D`` weights stored (in, out)), OPT
  (``fc1``/``activation_fn``/``fc2`` on the decoder layer), BERT / MiniLM
  (``intermediate.dense``/``intermediate_act_fn``/``output.dense``);
* a plain ``nn.Sequential``: every activation module followed (after optional dropout) by a
  ``nn.Linear``.

So in every family the hidden activation is the *input of the down projection*, and
``W_down[:, i]`` (:meth:`MLPSite.down_weight`, shape (out, hidden)) is the column neuron ``i``
writes to. A down projection already wrapped by an activation transform
(:class:`sparsecraft.activations.base.SparseActivation`) is looked through: the site's
``projection`` is the wrapped module and ``wrapper`` the transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError

#: model families the sites are found for (the message of an unsupported model lists them)
FAMILIES = ("gated (Llama, Qwen2, Qwen3, Mistral, ...)", "gpt2", "opt", "bert (MiniLM)", "nn.Sequential")
ACTIVATION_TYPES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Mish, nn.ReLU6,
                    nn.Hardswish, nn.Softplus)
_SKIP_IN_SEQUENTIAL = (nn.Dropout, nn.Identity)


@dataclass
class MLPSite:
    """One MLP of a model: its down projection and where its activation function sits.

    ``name``: dotted name of the down projection slot (e.g. ``model.layers.3.mlp.down_proj``);
    ``parent`` + ``attr``: where that slot is (``setattr(parent, attr, new)`` replaces it);
    ``act_parent`` + ``act_attr``: the activation function's slot; ``gated``: a = act(gate)*up.
    """

    name: str
    index: int
    family: str
    parent: nn.Module
    attr: str
    act_parent: nn.Module
    act_attr: str
    gated: bool

    @property
    def slot(self) -> nn.Module:
        """The module in the down projection's slot (the projection, or a transform's wrapper)."""
        return getattr(self.parent, self.attr)

    @property
    def wrapper(self) -> nn.Module | None:
        """The activation transform wrapping the projection, if any."""
        from sparsecraft.activations.base import SparseActivation

        slot = self.slot
        return slot if isinstance(slot, SparseActivation) else None

    @property
    def projection(self) -> nn.Module:
        """The down projection itself (``nn.Linear``, GPT-2 ``Conv1D``, or a converted kernel layer)."""
        w = self.wrapper
        return w.inner if w is not None else self.slot

    @property
    def activation(self) -> nn.Module:
        return getattr(self.act_parent, self.act_attr)

    @property
    def hidden(self) -> int:
        """Width of the hidden activation (the down projection's input features)."""
        return int(self.down_weight().shape[1])

    @torch.no_grad()
    def down_weight(self) -> torch.Tensor:
        """``W_down`` as an (out, hidden) tensor: column ``i`` is what neuron ``i`` writes."""
        proj = self.projection
        if type(proj).__name__ == "Conv1D":  # GPT-2 stores (in, out)
            return proj.weight.detach().t()
        dense = getattr(proj, "dense_weight", None)  # a converted SparseLinear
        if callable(dense):
            return dense()
        return proj.weight.detach()


def _has(module: nn.Module, *names: str) -> bool:
    return all(hasattr(module, n) for n in names)


def _site_of_block(name: str, i: int, block: nn.Module) -> MLPSite | None:
    prefix = f"{name}." if name else ""
    mlp = getattr(block, "mlp", None)
    if mlp is not None and _has(mlp, "gate_proj", "up_proj", "down_proj", "act_fn"):
        return MLPSite(f"{prefix}mlp.down_proj", i, "gated", mlp, "down_proj", mlp, "act_fn", True)
    if mlp is not None and _has(mlp, "c_fc", "c_proj", "act"):
        return MLPSite(f"{prefix}mlp.c_proj", i, "gpt2", mlp, "c_proj", mlp, "act", False)
    if _has(block, "fc1", "fc2", "activation_fn"):
        return MLPSite(f"{prefix}fc2", i, "opt", block, "fc2", block, "activation_fn", False)
    inter, out = getattr(block, "intermediate", None), getattr(block, "output", None)
    if inter is not None and out is not None and _has(inter, "dense", "intermediate_act_fn") and _has(out, "dense"):
        return MLPSite(f"{prefix}output.dense", i, "bert", out, "dense", inter, "intermediate_act_fn", False)
    return None


def _sequential_sites(model: nn.Sequential, prefix: str = "") -> list[MLPSite]:
    from sparsecraft.activations.base import SparseActivation
    from sparsecraft.activations.relufy import ShiftedReLU

    sites, mods = [], list(model)
    for i, m in enumerate(mods):
        if not isinstance(m, (*ACTIVATION_TYPES, ShiftedReLU)):
            continue
        j = i + 1
        while j < len(mods) and isinstance(mods[j], _SKIP_IN_SEQUENTIAL):
            j += 1
        if j < len(mods) and isinstance(mods[j], (nn.Linear, SparseActivation)):
            sites.append(MLPSite(f"{prefix}{j}", len(sites), "sequential", model, str(j), model, str(i), False))
    return sites


def find_sites(model: nn.Module) -> list[MLPSite]:
    """Every MLP of ``model``, in depth order; a clear error for an unsupported model."""
    if isinstance(model, nn.Sequential):
        sites = _sequential_sites(model)
        if not sites:
            raise SparsecraftError(
                "the nn.Sequential has no activation module followed by an nn.Linear; "
                "an MLP site is Linear -> activation -> Linear"
            )
        return sites
    from sparsecraft.oneshot.blockwise import find_blocks

    try:
        stack = find_blocks(model)
    except SparsecraftError:
        stack = None
    sites = []
    if stack is not None:
        for i, block in enumerate(stack.blocks):
            site = _site_of_block(stack.block_name(i), i, block)
            if site is not None:
                sites.append(site)
    if not sites:
        raise SparsecraftError(
            f"unsupported model family {type(model).__name__}: no MLP found; "
            f"supported: {', '.join(FAMILIES)}"
        )
    return sites
