import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sparsecraft
from sparsecraft.oneshot.owl import outlier_ratio, owl_sparsities

from .tiny import calib_ids, tiny_llama


def test_outlier_ratio_counts_above_m_times_mean():
    s = torch.tensor([1.0] * 18 + [100.0, 200.0])  # mean 15.9 -> threshold 79.5
    assert outlier_ratio([s[:10], s[10:]], m=5) == pytest.approx(2 / 20)


@given(st.lists(st.floats(0, 0.5), min_size=2, max_size=40), st.floats(0.2, 0.8), st.floats(0.0, 0.1))
def test_owl_keeps_the_mean_budget(ratios, target, lam):
    s = owl_sparsities(ratios, target, lam)
    assert sum(s) / len(s) == pytest.approx(target, abs=1e-12)
    assert max(s) - min(s) <= 2 * lam + 1e-12


def test_owl_prunes_outlier_rich_blocks_less():
    s = owl_sparsities([0.01, 0.05, 0.02], 0.7, 0.08)
    assert s[1] < s[2] < s[0]
    assert s[0] - s[1] == pytest.approx(0.16)
    assert owl_sparsities([0.1, 0.1], 0.5) == [0.5, 0.5]


def test_owl_out_of_range_is_an_error():
    with pytest.raises(Exception, match="outside"):
        owl_sparsities([0.0, 1.0], 0.99, 0.08)


def reference_owl(model, ids, m, lam, target):
    """luuyin/OWL ``prune_wanda_outlier``, written out: on the dense model, per decoder layer the
    Wanda metric |W| * sqrt(sum of x_j^2) of all its Linear layers concatenated; the outlier
    ratio is the percentage above M * mean; densities = min-max scaled ratios * 2 lambda, minus
    their mean, plus 1 - target; sparsity = 1 - density."""
    energy, handles = {}, []
    for mod in model.model.layers.modules():
        if isinstance(mod, torch.nn.Linear):
            def hook(module, inp, out):
                x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
                energy[module] = energy.get(module, 0) + (x * x).sum(0)

            handles.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    ratios = []
    for layer in model.model.layers:
        metric = torch.cat([(mod.weight.detach().double().abs() * energy[mod].sqrt().reshape(1, -1)).flatten()
                            for mod in layer.modules() if isinstance(mod, torch.nn.Linear)])
        ratios.append(float((metric > metric.mean() * m).sum()) / metric.numel() * 100)
    r = np.array(ratios)
    density = (r - r.min()) * (1 / (r.max() - r.min()) * lam * 2)
    density = density - np.mean(density) + (1 - target)
    return ratios, [1 - float(d) for d in density]


@pytest.mark.parametrize("m, lam", [(5.0, 0.08), (3.0, 0.2)])
def test_owl_ratios_and_budgets_match_the_reference_procedure(m, lam):
    model = tiny_llama(layers=4, seed=3)
    ids = calib_ids(4, 16)
    ref_ratios, ref_sparsity = reference_owl(model, ids, m, lam, 0.6)
    rep = sparsecraft.prune(model, 0.6, criterion="wanda", distribution={"type": "owl", "m": m, "lam": lam},
                            calib=ids, progress=False)
    ratios, block_s = rep.info["owl_ratios"], rep.info["block_sparsities"]
    assert len(set(ref_ratios)) > 2  # the blocks really differ
    assert [100 * r for r in ratios] == pytest.approx(ref_ratios, rel=1e-6)
    assert block_s == pytest.approx(ref_sparsity, abs=1e-9)
    # the block with the most outliers is pruned least, every row at int(in * s_l) (the reference's count)
    assert block_s.index(min(block_s)) == ref_ratios.index(max(ref_ratios))
    for i, layer in enumerate(model.model.layers):
        for mod in layer.modules():
            if isinstance(mod, torch.nn.Linear):
                pruned = (~mod.weight_mask).sum(1)
                assert (pruned == int(mod.in_features * ref_sparsity[i])).all()
