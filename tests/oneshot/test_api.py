import pytest
import torch

import sparsecraft
from sparsecraft import prune
from sparsecraft.masks import masked_params

from .tiny import calib_ids, tiny_bert, tiny_gpt2, tiny_llama, tiny_opt

#: the three one-shot rows of the papers, in the library's words
HOW = {"magnitude": {"criterion": "magnitude"}, "wanda": {"criterion": "wanda"}, "sparsegpt": {"method": "sparsegpt"}}


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


@pytest.mark.parametrize("how", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2, tiny_opt])
def test_prune_masks_exact(how, pattern, make):
    model = make()
    rep = prune(model, 0.5, **HOW[how], pattern=pattern, calib=calib_ids(4), progress=False)
    mps = check_exact(model, pattern)
    assert rep.sparsity == pytest.approx(0.5, abs=1e-6)
    names = {mp.name for mp in mps}
    assert not any("lm_head" in n or "wte" in n or "embed" in n for n in names)  # default targets: the blocks
    assert all(mp.meta.method == how for mp in mps)
    assert rep.info["pattern"] == pattern


def test_prune_bert_encoder():
    model = tiny_bert()
    batch = {"input_ids": calib_ids(3), "attention_mask": torch.ones(3, 16, dtype=torch.long)}
    rep = prune(model, 0.5, method="sparsegpt", pattern="4:8", calib=[batch], progress=False)
    check_exact(model, "4:8")
    assert rep.sparsity == pytest.approx(0.5)


def test_wanda_70_percent_true_sparsity_is_per_row_floor():
    model = tiny_llama()
    rep = prune(model, 0.7, criterion="wanda", calib=calib_ids(2), progress=False)
    for layer in rep.layers:
        cols = layer.shape[1]
        assert layer.sparsity == pytest.approx((7 * cols // 10) / cols)


def test_magnitude_with_and_without_calib_is_the_same_per_matrix_rule():
    a, b = tiny_llama(seed=3), tiny_llama(seed=3)
    prune(a, 0.5, progress=False)
    prune(b, 0.5, criterion="magnitude", calib=calib_ids(2), progress=False)
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), n
    w = a.model.layers[0].mlp.up_proj.weight.detach()  # per matrix: exactly half of this matrix is zero
    assert int((w == 0).sum()) == w.numel() // 2


def test_sparsegpt_beats_magnitude_on_the_tiny_llama():
    ids = calib_ids(8, 32)
    out = {}
    for how in ("magnitude", "sparsegpt"):
        model = tiny_llama(seed=1)
        dense = model(input_ids=ids).logits
        prune(model, 0.6, **HOW[how], calib=ids, progress=False)
        out[how] = float((model(input_ids=ids).logits - dense).pow(2).mean().detach())
    assert out["sparsegpt"] < out["magnitude"]


def test_owl_budgets_on_a_model():
    model = tiny_llama(layers=4)
    rep = prune(model, 0.5, criterion="wanda", distribution={"type": "owl", "lam": 0.1}, calib=calib_ids(4),
                progress=False)
    ratios, block_s = rep.info["owl_ratios"], rep.info["block_sparsities"]
    assert len(ratios) == 4
    assert sum(block_s) / 4 == pytest.approx(0.5, abs=1e-12)
    assert max(block_s) - min(block_s) > 0.05
    for layer in rep.layers:  # every layer of block i prunes floor(s_i * cols) per row (Wanda's rule)
        i = int(layer.name.split(".")[2])
        cols = layer.shape[1]
        assert layer.sparsity == pytest.approx(int(block_s[i] * cols + 1e-6) / cols)


def test_user_errors():
    err = sparsecraft.SparsecraftError
    with pytest.raises(err, match="calibration"):
        prune(tiny_llama(), 0.5, criterion="wanda")
    with pytest.raises(err, match="calibration"):
        prune(tiny_llama(), 0.5, distribution="owl")
    with pytest.raises(err, match="cannot prune with pattern"):
        prune(tiny_llama(), 0.5, method="sparsegpt", pattern="channel", calib=calib_ids(2))
    with pytest.raises(err, match="one-shot method"):
        prune(tiny_llama(), 0.5, method="obs", calib=calib_ids(2))
    with pytest.raises(err, match="'wanda' is a criterion"):
        prune(tiny_llama(), 0.5, method="wanda", calib=calib_ids(2))
    with pytest.raises(err, match="leave criterion unset"):
        prune(tiny_llama(), 0.5, method="sparsegpt", criterion="wanda", calib=calib_ids(2))
    with pytest.raises(err, match="fixes its own"):
        prune(tiny_llama(), 0.5, criterion="wanda", pattern="2:4", distribution="owl", calib=calib_ids(2))
    with pytest.raises(err, match="ranks every layer at once"):
        prune(tiny_llama(), 0.5, criterion="wanda", distribution="global", calib=calib_ids(2))
    with pytest.raises(err, match="unknown option"):
        prune(tiny_llama(), 0.5, blocksize=64)
    with pytest.raises(err, match="sparsity must be a number in"):
        prune(tiny_llama(), None)  # type: ignore[arg-type]
    with pytest.raises(err, match="expects a torch.nn.Module"):
        prune("x", 0.5)  # type: ignore[arg-type]
    with pytest.raises(err, match="bad regex"):
        prune(tiny_llama(), 0.5, targets=["("])


def test_checkpoint_roundtrip_after_prune(tmp_path):
    model = tiny_llama()
    prune(model, 0.5, method="sparsegpt", pattern="2:4", calib=calib_ids(2), progress=False)
    path = sparsecraft.save(model, tmp_path / "m.safetensors")
    fresh = sparsecraft.load(tiny_llama(seed=5), path)
    ids = calib_ids(1)
    assert torch.allclose(fresh(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    assert sparsecraft.report(fresh).sparsity == pytest.approx(sparsecraft.report(model).sparsity)
