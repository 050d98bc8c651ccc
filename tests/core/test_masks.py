import torch
from torch import nn

import sparsecraft
from sparsecraft.masks import apply_masks, masked_params, prepare_for_state_dict, remove_masks
from tests.core.helpers import small_mlp


def test_apply_rezeroes_after_an_update_and_remove_makes_permanent():
    model = small_mlp()
    sparsecraft.prune(model, 0.75)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # e.g. an optimizer step
    assert sparsecraft.report(model).layer("0.weight").sparsity < 0.75  # the report never lies
    apply_masks(model)
    assert sparsecraft.report(model).layer("0.weight").sparsity == 0.75
    remove_masks(model)
    assert list(masked_params(model)) == []
    assert "0.weight_mask" not in model.state_dict()
    assert sparsecraft.report(model).layer("0.weight").sparsity == 0.75


def test_state_dict_round_trip_into_a_fresh_model():
    model = small_mlp(0)
    sparsecraft.prune(model, 0.7, distribution="global")
    sd = model.state_dict()
    fresh = small_mlp(1)
    prepare_for_state_dict(fresh, sd)
    fresh.load_state_dict(sd)
    x = torch.randn(3, 16)
    assert torch.equal(model(x), fresh(x))
    assert [m.name for m in masked_params(fresh)] == ["0.weight", "2.weight", "4.weight"]


def test_repruning_keeps_earlier_zeros():
    model = small_mlp()
    sparsecraft.prune(model, 0.5, criterion="random")
    first = model[0].weight_mask.clone()
    sparsecraft.prune(model, 0.8)
    assert not torch.any(model[0].weight_mask & ~first)


def test_report_model_totals_count_every_parameter():
    model = nn.Sequential(nn.Linear(10, 10))
    rep = sparsecraft.prune(model, 0.5)
    assert rep.model_numel == 110
    assert rep.model_nonzeros == 50 + int(torch.count_nonzero(model[0].bias))


def test_top_level_lazy_entry_points_resolve():
    for name in ("attach", "prune", "convert", "SparseLinear", "encode_delta", "apply_delta", "fit", "load_fit"):
        assert callable(getattr(sparsecraft, name)), name


def test_apply_masks_leaves_soft_masked_dense_weights_alone():
    layer = nn.Linear(8, 2)
    sparsecraft.set_mask(layer, torch.rand(2, 8) > 0.5, apply=False)
    layer.sparsecraft_forward_weights = {"weight": lambda: layer.weight * layer.weight_mask}
    before = layer.weight.detach().clone()
    apply_masks(layer)
    assert torch.equal(layer.weight, before)  # the dense weight an STE method trains survives
    rep = sparsecraft.report(layer)
    assert rep.layers[0].nonzeros == int(torch.count_nonzero(before * layer.weight_mask))


def test_zero_pruned_is_a_where_not_a_product():
    import pytest

    from sparsecraft.masks import keep_bits, zero_pruned_

    keep = torch.tensor([[True, False, True], [False, True, False]])
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        x = torch.tensor([[float("nan"), float("inf"), -2.5], [float("-inf"), float("inf"), -0.0]], dtype=dtype)
        for bits in (keep_bits(keep, dtype), None):  # fast integer path and masked_fill fallback
            y = x.clone()
            zero_pruned_(y, keep, bits)
            assert torch.isnan(y[0, 0]) and y[0, 2] == -2.5 and y[1, 1] == float("inf")  # kept: untouched
            assert y[0, 1] == 0 and y[1, 0] == 0 and y[1, 2] == 0  # pruned: 0, never NaN
            assert not torch.signbit(y[~keep]).any()
    t = torch.randn(3, 2).t()  # a non-contiguous view
    zero_pruned_(t, keep, keep_bits(keep, t.dtype))
    assert (t[~keep] == 0).all() and (t[keep] != 0).all()
    assert keep_bits(keep, torch.int64) is None
    with pytest.raises(RuntimeError):  # a wrong-shape mask is an error, not a silent broadcast
        zero_pruned_(torch.zeros(3, 3), keep, keep_bits(keep, torch.float32))
