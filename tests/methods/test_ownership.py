"""One sparse method per optimizer and per weight: a second attach is refused until the first
is finalized or detached."""

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods import attach

from .dst_util import batches, tiny_mlp, train_step


def test_second_method_on_the_same_optimizer_is_refused() -> None:
    model, other = tiny_mlp(), tiny_mlp(1)
    opt = torch.optim.SGD([*model.parameters(), *other.parameters()], lr=0.1)
    first = attach(model, opt, method="rigl", sparsity=0.8, total_steps=10)
    with pytest.raises(SparsecraftError, match="optimizer already drives .*'rigl'"):
        attach(other, opt, method="static", sparsity=0.5, total_steps=10)
    assert not hasattr(other[0], "weight_mask")  # refused before touching anything
    train_step(model, opt, batches(1)[0])  # the first method still runs alone
    first.finalize()
    attach(other, opt, method="static", sparsity=0.5, total_steps=10)  # free again


def test_second_method_on_the_same_weights_is_refused() -> None:
    model = tiny_mlp()
    first = attach(model, torch.optim.SGD(model.parameters(), lr=0.1), method="static",
                   sparsity=0.5, total_steps=10)
    mask = model[0].weight_mask.clone()
    with pytest.raises(SparsecraftError, match="weight '0.weight' is already managed by .*'static'"):
        attach(model, torch.optim.Adam(model.parameters()), method="rigl", sparsity=0.9, total_steps=10)
    assert torch.equal(model[0].weight_mask, mask)
    first.detach()
    attach(model, None, method="rigl", sparsity=0.9, total_steps=10)


def test_a_dropped_method_frees_its_claims() -> None:
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = attach(model, opt, method="static", sparsity=0.5, total_steps=10)
    m.finalize()
    del m
    attach(model, opt, method="static", sparsity=0.5, total_steps=10)


def test_an_nm_method_is_refused_before_it_touches_the_masks() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    attach(model, None, method="ste", pattern="2:4", total_steps=10)
    mask = model[0].weight_mask.clone()
    with pytest.raises(SparsecraftError, match="already managed by .*'ste'"):  # its sync_phase sets 3:4 masks
        attach(model, None, method="pgf", mode="sdgf", pattern="2:4", dense_steps=0, finetune_steps=0,
               total_steps=10)  # fmt: skip
    assert torch.equal(model[0].weight_mask, mask)
