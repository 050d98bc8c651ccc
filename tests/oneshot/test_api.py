import pytest
import torch

import sparsecraft
from sparsecraft.masks import masked_params
from sparsecraft.oneshot import prune_model

from .tiny import calib_ids, tiny_bert, tiny_gpt2, tiny_llama, tiny_opt


def check_exact(model, pattern):
    mps = list(masked_params(model))
    assert mps
    for mp in mps:
        w = mp.param.detach()
        assert bool((w[~mp.mask] == 0).all()), mp.name  # mask and zeros agree
        if ":" in pattern:
            n, m = map(int, pattern.split(":"))
            keep = mp.mask.t() if type(mp.module).__name__ == "Conv1D" else mp.mask
            assert (keep.reshape(keep.shape[0], -1, m).sum(-1) == n).all(), mp.name
    return mps


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2, tiny_opt])
def test_prune_model_masks_exact(method, pattern, make):
    model = make()
    res = prune_model(model, calib_ids(4), method=method, sparsity=0.5, pattern=pattern, progress=False)
    mps = check_exact(model, pattern)
    assert res.report.sparsity == pytest.approx(0.5, abs=1e-6)
    names = {mp.name for mp in mps}
    assert not any("lm_head" in n or "wte" in n or "embed" in n for n in names)
    assert all(mp.meta.method == method for mp in mps)


def test_prune_model_bert_encoder():
    model = tiny_bert()
    batch = {"input_ids": calib_ids(3), "attention_mask": torch.ones(3, 16, dtype=torch.long)}
    res = prune_model(model, [batch], method="sparsegpt", sparsity=0.5, pattern="4:8", progress=False)
    check_exact(model, "4:8")
    assert res.report.sparsity == pytest.approx(0.5)


def test_wanda_70_percent_true_sparsity_is_per_row_floor():
    model = tiny_llama()
    res = prune_model(model, calib_ids(2), method="wanda", sparsity=0.7, progress=False)
    for layer in res.report.layers:
        cols = layer.shape[1]
        assert layer.sparsity == pytest.approx((7 * cols // 10) / cols)


def test_sparsegpt_beats_magnitude_on_the_tiny_llama():
    ids = calib_ids(8, 32)
    out = {}
    for method in ("magnitude", "sparsegpt"):
        model = tiny_llama(seed=1)
        dense = model(input_ids=ids).logits
        prune_model(model, ids, method=method, sparsity=0.6, progress=False)
        out[method] = float((model(input_ids=ids).logits - dense).pow(2).mean().detach())
    assert out["sparsegpt"] < out["magnitude"]


def test_owl_budgets_on_a_model():
    model = tiny_llama(layers=4)
    res = prune_model(model, calib_ids(4), method="wanda", sparsity=0.5, owl=True, owl_lambda=0.1,
                      progress=False)
    assert len(res.owl_ratios) == 4
    assert sum(res.block_sparsities) / 4 == pytest.approx(0.5, abs=1e-12)
    assert max(res.block_sparsities) - min(res.block_sparsities) > 0.05
    with pytest.raises(sparsecraft.SparsecraftError, match="N:M"):
        prune_model(tiny_llama(), calib_ids(2), method="wanda", pattern="2:4", owl=True)


def test_user_errors():
    with pytest.raises(sparsecraft.SparsecraftError, match="calibration"):
        prune_model(tiny_llama(), None, method="wanda")
    with pytest.raises(sparsecraft.SparsecraftError, match="cannot prune with pattern"):
        prune_model(tiny_llama(), calib_ids(2), method="sparsegpt", pattern="channel")
    with pytest.raises(sparsecraft.SparsecraftError, match="one-shot method"):
        prune_model(tiny_llama(), calib_ids(2), method="obs")


def test_checkpoint_roundtrip_after_prune(tmp_path):
    model = tiny_llama()
    prune_model(model, calib_ids(2), method="sparsegpt", sparsity=0.5, pattern="2:4", progress=False)
    path = sparsecraft.save(model, tmp_path / "m.safetensors")
    fresh = sparsecraft.load(tiny_llama(seed=5), path)
    ids = calib_ids(1)
    assert torch.allclose(fresh(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    assert sparsecraft.report(fresh).sparsity == pytest.approx(sparsecraft.report(model).sparsity)
