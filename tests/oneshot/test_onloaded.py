"""Pruning a model folder block by block (sequential onloading) gives the in-memory result, bit for bit."""

import json

import pytest
import torch

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.onloaded import estimate, read_masks

from .tiny import calib_ids, tiny_gpt2, tiny_llama, tiny_opt

tr = pytest.importorskip("transformers")
HOW = {"wanda": {"criterion": "wanda"}, "sparsegpt": {"method": "sparsegpt"}}


def _save(model, folder, dtype):
    model.to(dtype).save_pretrained(str(folder))
    return folder


def _in_memory(folder, dtype, how, ids, **kw):
    model = tr.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()
    sparsecraft.prune(model, 0.5, calib=ids, batch_size=2, progress=False, **HOW[how], **kw)
    return model.state_dict()


def _check_same(out, ref):
    masks = read_masks(out)
    assert masks
    for name, keep in masks.items():
        assert torch.equal(keep, ref[name[: -len("weight")] + "weight_mask"]), name
    got = tr.AutoModelForCausalLM.from_pretrained(str(out), dtype=next(iter(ref.values())).dtype).state_dict()
    for k, v in got.items():
        assert torch.equal(v, ref[k]), k


@pytest.mark.parametrize("how", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_onloaded_equals_in_memory(how, dtype, tmp_path):
    src = _save(tiny_llama(layers=3), tmp_path / "src", dtype)
    ids = calib_ids(5, 16)
    ref = _in_memory(src, dtype, how, ids)
    for spill in (False, True):
        out = tmp_path / f"out-{spill}"
        rep = sparsecraft.prune(str(src), 0.5, calib=ids, batch_size=2, out=str(out), offload="disk", spill=spill,
                                progress=False, **HOW[how])
        assert rep.info["offload"] == "disk (offload='disk')" and rep.info["spilled"] is spill
        assert rep.info["dtype"] == str(dtype).replace("torch.", "") and len(rep.info["block_times_s"]) == 3
        assert rep.sparsity == pytest.approx(0.5)
        _check_same(out, ref)
        assert json.loads((out / "prune.json").read_text())["offload"].startswith("disk")


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_opt])
def test_other_families(make, tmp_path):
    src = _save(make(), tmp_path / "src", torch.float32)
    ids = calib_ids(4, 16)
    ref = _in_memory(src, torch.float32, "sparsegpt", ids, pattern="2:4")
    sparsecraft.prune(str(src), 0.5, method="sparsegpt", pattern="2:4", calib=ids, batch_size=2,
                      out=str(tmp_path / "out"), offload="disk", progress=False)
    _check_same(tmp_path / "out", ref)


def test_owl_onloaded(tmp_path):
    src = _save(tiny_llama(layers=4), tmp_path / "src", torch.float32)
    ids = calib_ids(4, 16)
    owl = {"type": "owl", "lam": 0.1}
    ref = _in_memory(src, torch.float32, "wanda", ids, distribution=owl)
    rep = sparsecraft.prune(str(src), 0.5, criterion="wanda", distribution=owl, calib=ids, batch_size=2,
                            out=str(tmp_path / "out"), offload="disk", progress=False)
    assert len(rep.info["owl_ratios"]) == 4
    _check_same(tmp_path / "out", ref)


def test_auto_and_memory_budget(tmp_path, monkeypatch):
    src = _save(tiny_llama(layers=2), tmp_path / "src", torch.bfloat16)
    ids = calib_ids(4, 16)
    rep = sparsecraft.prune(str(src), 0.5, criterion="wanda", calib=ids, out=str(tmp_path / "a"), progress=False)
    assert rep.info["offload"].startswith("none (auto:")  # a tiny model fits
    from sparsecraft.distributed.onload import OnloadedModel

    est = estimate(OnloadedModel(src), ids, 8)
    one_block = est["block"] + est["work"] + est["batch"]
    whole = est["model"] + est["work"] + est["activations"] + est["batch"]
    assert one_block < whole
    monkeypatch.setenv("SPARSECRAFT_MEMORY_BUDGET", str(whole))  # the whole run would not fit in 80%, a block does
    rep = sparsecraft.prune(str(src), 0.5, criterion="wanda", calib=ids, out=str(tmp_path / "b"), progress=False)
    assert rep.info["offload"].startswith("disk (auto: the in-memory run needs")
    monkeypatch.setenv("SPARSECRAFT_MEMORY_BUDGET", str(one_block // 2))
    with pytest.raises(SparsecraftError, match="too small for one block"):
        sparsecraft.prune(str(src), 0.5, criterion="wanda", calib=ids, out=str(tmp_path / "c"), progress=False)
    assert not (tmp_path / "c").exists()


def test_bad_input(tmp_path):
    src = _save(tiny_llama(layers=2), tmp_path / "src", torch.float32)
    ids = calib_ids(2, 16)
    with pytest.raises(SparsecraftError, match="give out="):
        sparsecraft.prune(str(src), 0.5, criterion="wanda", calib=ids, progress=False)
    with pytest.raises(SparsecraftError, match="offload must be one of"):
        sparsecraft.prune(str(src), 0.5, criterion="wanda", calib=ids, out=str(tmp_path / "o"), offload="ram")
    with pytest.raises(SparsecraftError, match="needs calibration data"):
        sparsecraft.prune(str(src), 0.5, criterion="wanda", out=str(tmp_path / "o"))
    with pytest.raises(SparsecraftError, match="work on a model folder"):
        sparsecraft.prune(tiny_llama(), 0.5, criterion="wanda", calib=ids, offload="disk")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparsecraftError, match="has no model.safetensors"):
        sparsecraft.prune(str(tmp_path / "empty"), 0.5, criterion="wanda", calib=ids, out=str(tmp_path / "o"))
    with pytest.raises(SparsecraftError, match="has no masks/"):
        read_masks(src)
    assert not (tmp_path / "o").exists()


def test_fused_experts_are_refused_before_anything_is_written(tmp_path):
    """transformers writes fused experts one expert per tensor, which onloading does not read: a one-line
    error naming the cause (it said 'the checkpoint does not match its config'), and no output."""
    from tests.moe.tiny_hf_moe import ARCHS, tiny_moe

    src = _save(tiny_moe(ARCHS[0]), tmp_path / "src", torch.float32)
    with pytest.raises(SparsecraftError, match="fused experts weights .* expert by expert.*offload='none'"):
        sparsecraft.prune(str(src), 0.5, criterion="wanda", calib=calib_ids(4, 16), out=str(tmp_path / "out"),
                          offload="disk", progress=False)
    assert not (tmp_path / "out").exists()
