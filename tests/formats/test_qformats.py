"""The quantized formats: bit-exact round trips, sizes by hand, the smallest chosen, truncated or
inconsistent parts refused (never wrong numbers), and save / load / compress / HF round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sparsecraft
from sparsecraft.errors import CheckpointError, SparsecraftError
from sparsecraft.formats import unpack
from sparsecraft.formats.checkpoint import read_checkpoint
from sparsecraft.formats.hf import load_pretrained_sparse, load_sparse_model, save_pretrained_sparse
from sparsecraft.formats.qcommon import pack_quantized
from sparsecraft.layout import WeightLayout
from sparsecraft.quant.grid import QuantSpec, rtn
from sparsecraft.quant.state import QuantState, quantized_params
from tests.oneshot.tiny import calib_ids, tiny_llama


def _quantized(rows=8, cols=64, bits=4, group=16, sym=True, keep=None, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(rows, cols) * 0.05
    if keep is not None:
        w = w * keep
    deq, s, z = rtn(w, QuantSpec(bits, group, sym))
    return deq, QuantState(QuantSpec(bits, group, sym), s, z)


def _pack(w, st, fmt="auto"):
    return pack_quantized(w, st, WeightLayout("linear", tuple(w.shape)), fmt)


@pytest.mark.parametrize("bits,sym", [(4, True), (4, False), (8, True), (8, False)])
@pytest.mark.parametrize("fmt", ["qdense", "qbitmap", "qgroup"])
def test_round_trip_is_bit_exact(bits, sym, fmt):
    keep = (torch.rand(8, 64) > 0.5) if fmt != "qgroup" else (torch.rand(8, 4) > 0.5).repeat_interleave(16, 1)
    w, st = _quantized(bits=bits, sym=sym, keep=keep)
    p = _pack(w, st, fmt)
    assert p.format == fmt
    back = unpack(p)
    assert torch.equal(back.view(torch.int32), w.view(torch.int32))
    side = __import__("sparsecraft.formats.select", fromlist=["make_format"]).make_format(p.format, **p.params)
    qs = side.quant_state(p)
    assert torch.equal(qs["_qscale"], st.scale) and torch.equal(qs["_qzero"], st.zero)


def test_sizes_by_hand():
    # 8 x 64 int4, groups of 16, symmetric: codes 256 B, scales 8*4*2 = 64 B
    keep = torch.zeros(8, 64, dtype=torch.bool)
    keep[:, :16] = True  # one group of 16 per row nonzero
    w, st = _quantized(keep=keep)
    nnz = int((w != 0).sum())
    assert _pack(w, st, "qdense").nbytes == 256 + 64
    assert _pack(w, st, "qbitmap").nbytes == 64 + (nnz * 4 + 7) // 8 + 64
    qg = _pack(w, st, "qgroup")
    assert qg.params["g"] == 16 and qg.nbytes == (32 + 7) // 8 + 8 * 16 // 2 + 64
    assert _pack(w, st).format == "qgroup"  # auto: the smallest
    w2, st2 = _quantized(bits=8, sym=False)
    assert _pack(w2, st2, "qdense").nbytes == 512 + 64 + 32  # + 32 int8 zero points
    assert _pack(w2, st2).format == "qdense"


def test_off_grid_weight_is_refused():
    w, st = _quantized()
    w[0, 0] += 1e-4
    with pytest.raises(SparsecraftError, match="not on the layer's int4 grid"):
        _pack(w, st)


@pytest.mark.parametrize("part,cut", [("codes", 1), ("scales", 1), ("bitmap", 1), ("gbitmap", 1)])
def test_truncated_parts_fail_before_decoding(part, cut):
    keep = (torch.rand(8, 4) > 0.5).repeat_interleave(16, 1)
    w, st = _quantized(keep=keep)
    fmt = "qgroup" if part == "gbitmap" else "qbitmap"
    p = _pack(w, st, fmt)
    p.parts[part] = p.parts[part][:-cut]
    with pytest.raises(ValueError, match=part.replace("bitmap", "bitmap")):
        unpack(p)


@pytest.mark.parametrize("fmt,part", [("qdense", "scales"), ("qbitmap", "bitmap"), ("qgroup", "gbitmap"),
                                      ("qdense", "codes")])
def test_check_parts_refuses_wrong_sizes_before_decoding(fmt, part):
    # what a reader runs on a file's parts before decode allocates from the declared shape
    from sparsecraft.formats.select import make_format

    keep = (torch.rand(8, 4) > 0.5).repeat_interleave(16, 1)
    w, st = _quantized(keep=keep)
    p = _pack(w, st, fmt)
    checker = make_format(p.format, **p.params)
    checker.check_parts(p)  # the intact packing passes
    assert p.parts["scales"].dtype == np.uint16  # float16 bit patterns: every stored part is unsigned
    grown = dict(p.parts)
    grown[part] = np.concatenate([p.parts[part], p.parts[part]])  # 8 x 64 has 256 code bytes at most
    with pytest.raises(ValueError, match=part):
        checker.check_parts(type(p)(**{**p.__dict__, "parts": grown}))
    with pytest.raises(ValueError):  # a shape claimed 1000x larger than the parts hold
        checker.check_parts(type(p)(**{**p.__dict__, "shape": (8000, 64)}))


def test_bitmap_with_more_set_bits_than_codes_is_refused():
    w, st = _quantized(keep=torch.rand(8, 64) > 0.5)
    p = _pack(w, st, "qbitmap")
    p.parts["bitmap"] = np.full_like(p.parts["bitmap"], 0xFF)  # claims every weight is stored
    with pytest.raises(ValueError, match="codes"):
        unpack(p)


def _tied_tiny():
    m = tiny_llama()
    m.config.tie_word_embeddings = True
    m.lm_head.weight = m.model.embed_tokens.weight
    return m


def _pruned_quantized_model():
    m = _tied_tiny()
    sparsecraft.prune(m, 0.5, method="sparsegpt", quantize={"bits": 4, "group": 16, "embedding": 8, "sym": False},
                      calib=calib_ids(), progress=False)
    return m


def test_save_load_and_compress_round_trip(tmp_path):
    m = _pruned_quantized_model()
    sparsecraft.save(m, tmp_path / "dense.safetensors")  # floats + buffers as they are
    sparsecraft.save(m, tmp_path / "packed.safetensors", format="auto")
    state, doc = read_checkpoint(tmp_path / "packed.safetensors")
    formats = {h["format"] for h in doc["packed"].values()}
    assert formats <= {"qdense", "qbitmap", "qgroup"} and "qbitmap" in formats
    assert doc["sizes"]["stored_bytes"] < (tmp_path / "dense.safetensors").stat().st_size / 4
    fresh = _tied_tiny()
    sparsecraft.load(path=tmp_path / "packed.safetensors", model=fresh)
    ref, got = m.state_dict(), fresh.state_dict()
    assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)
    from sparsecraft.formats.files import compress_file

    compress_file(tmp_path / "dense.safetensors", tmp_path / "compressed.safetensors")
    s2, _ = read_checkpoint(tmp_path / "compressed.safetensors")
    assert all(torch.equal(s2[k], state[k]) for k in state)


def test_hf_directory_round_trips(tmp_path):
    m = _pruned_quantized_model()
    save_pretrained_sparse(m, tmp_path / "hf")
    plain = load_pretrained_sparse(tmp_path / "hf")  # plain transformers, dequantized floats
    assert not any(k.endswith(("_qscale", "_qzero", "_qspec", "_mask")) for k in plain.state_dict())
    for k, v in plain.state_dict().items():
        assert torch.equal(v, m.state_dict()[k])
    full = load_sparse_model(tmp_path / "hf")  # with masks and scales, for the kernels
    assert {n for n, *_ in quantized_params(full)} == {n for n, *_ in quantized_params(m)}
    assert torch.equal(full.model.layers[0].mlp.up_proj.weight_mask, m.model.layers[0].mlp.up_proj.weight_mask)
    with pytest.raises(CheckpointError, match="not a model directory"):
        load_sparse_model(tmp_path / "nope")
