"""int8-input kernels (csrc/qdot_x8.h): packed_linear with ``xbits`` 8 equals an independent float64
reference of the rule (x rounded to int8 per quantization group, exact integer dot products, one
float scale per group) for int4/int8, dense/bitmap, symmetric/asymmetric grids, batch 1..8 and every
instruction set compiled here; the decode path with ``input_bits=8`` equals transformers with the
same input rounding hooked in; unsupported layouts are refused with one line."""

from __future__ import annotations

import pytest
import torch

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.kernels import quant_pack as qp
from sparsecraft.quant.grid import QuantSpec, codes_of, rtn


def round_inputs(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(xq, sx): xq = round-half-even(x / sx) in [-127, 127], sx = max|x| / 127 per group of inputs."""
    xg = x.float().reshape(*x.shape[:-1], -1, group)
    sx = xg.abs().amax(-1, keepdim=True) / 127.0
    xq = torch.where(sx > 0, torch.round(xg / torch.where(sx > 0, sx, torch.ones_like(sx))), torch.zeros_like(xg))
    return xq.clamp(-127, 127), sx


def reference(codes, keep, scale, zero, group, x) -> torch.Tensor:
    out, inp = codes.shape
    xq, sx = round_inputs(x, group)
    d = (codes.double() - zero.double().repeat_interleave(group, 1)) * keep.double()
    ints = torch.einsum("ngk,ogk->nog", xq.double(), d.reshape(out, -1, group))  # exact integers
    s = scale.to(torch.float16).double()
    return (ints * s[None] * sx.squeeze(-1).double()[:, None, :]).sum(-1)


def _pack(bits, sym, group, sparse, seed=0, inp=384, g=0):
    """sparse: an element bitmap (g = 0) or a group bitmap of g inputs kept or dropped together."""
    torch.manual_seed(seed)
    out = 37
    keep = (torch.rand(out, inp // max(g, 1)) > 0.5).repeat_interleave(max(g, 1), 1) if sparse else \
        torch.ones(out, inp, dtype=torch.bool)
    w, s, z = rtn(torch.randn(out, inp) * keep, QuantSpec(bits, group, sym))
    codes = codes_of(w, s, z, bits)
    p = qp.pack_q_sparse(codes, keep, s, z, bits, g) if sparse else qp.pack_q_dense(codes, s, z, bits)
    return p, codes, keep, s, z


CASES = [(b, sym, grp, sp, 0) for b in (4, 8) for sym in (True, False) for grp in (64, 128) for sp in (False, True)
         if not (b == 8 and not sym and sp)] + [(b, True, 64, True, g) for b in (4, 8) for g in (4, 8, 16)]


@pytest.mark.parametrize("inp", [384, 2432])  # 2432: batch 1 runs full blocks of 16 groups and a tail
@pytest.mark.parametrize("bits,sym,group,sparse,g", CASES)
def test_int8_inputs_match_the_rule(kops, bits, sym, group, sparse, g, inp):
    p, codes, keep, s, z = _pack(bits, sym, group, sparse, inp=inp, g=g)
    p8 = qp.with_int8_inputs(p, codes, keep if sparse else None, z)
    assert int(p8["meta"][9]) == 8 and p8["csums"].dtype == torch.int16
    for n in (1, 3, 8):
        x = torch.randn(n, codes.shape[1]) * torch.linspace(0.1, 3, codes.shape[1])
        x[:, :group] = 0  # an all-zero group: scale 0, contributes nothing
        ref = reference(codes, keep, s, z, group, x)
        for level in range(kops.set_isa(9) + 1):
            kops.set_isa(level)
            y = kops.packed_linear(x, qp.parts_of(p8), None, p8["meta"].tolist()).double()
            assert (y - ref).abs().max() <= 2e-6 * ref.abs().max(), (level, n)
        float_in = kops.packed_linear(x, qp.parts_of(p), None, p["meta"].tolist()).double()
        assert (float_in - ref).abs().max() > 1e-5 * ref.abs().max()  # the rounding is really applied


def test_zero_point_and_order_by_hand(kops):
    """One row, int4, G = 64: codes k % 16 with z = 3, x = e_j: the output is s * sx * 127 * (q_j - z)
    for every input j (a wrong nibble order or a dropped zero point moves the value)."""
    codes = (torch.arange(64) % 16).to(torch.uint8).reshape(1, 64)
    scale, zero = torch.full((1, 1), 0.5), torch.full((1, 1), 3.0)
    p8 = qp.with_int8_inputs(qp.pack_q_dense(codes, scale, zero, 4), codes, None, zero)
    x = torch.eye(64) * 2.0  # each row: one input of 2.0 -> sx = 2/127, xq = 127
    for level in range(kops.set_isa(9) + 1):
        kops.set_isa(level)
        y = kops.packed_linear(x, qp.parts_of(p8), None, p8["meta"].tolist())
        expect = torch.tensor([0.5 * (j % 16 - 3) * 2.0 for j in range(64)])
        # float32 rounding of the lanes (each carries the +128 input offset) costs ~1e-5 here; a wrong
        # nibble order or zero point costs >= 0.5
        assert torch.allclose(y[:, 0], expect, atol=1e-4), level


def test_unsupported_layouts_are_refused(kops):
    p, codes, keep, s, z = _pack(4, True, 64, False)
    with pytest.raises(SparsecraftError, match="multiples of 64"):
        w, s32, z32 = rtn(torch.randn(8, 96), QuantSpec(4, 32, True))
        qp.with_int8_inputs(qp.pack_q_dense(codes_of(w, s32, z32, 4), s32, z32, 4), codes_of(w, s32, z32, 4))
    assert "dense, bitmap or group-bitmap" in qp.int8_inputs_unsupported(qp.pack_f32_dense(torch.randn(4, 64)))
    p8, *_ = _pack(8, False, 64, True)
    with pytest.raises(SparsecraftError, match="symmetric grid"):
        _, c8, k8, _, z8 = _pack(8, False, 64, True)
        qp.with_int8_inputs(p8, c8, k8, z8)
    meta = p["meta"].tolist()
    meta[9] = 8  # claims int8 inputs without the csums part
    with pytest.raises(RuntimeError, match="csums"):
        kops.packed_linear(torch.randn(1, codes.shape[1]), qp.parts_of(p) + [torch.zeros(1, dtype=torch.int16)],
                           None, meta)


def _llama64():
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tr.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    m = tr.LlamaForCausalLM(cfg).eval()
    m.lm_head.weight = m.model.embed_tokens.weight
    return m


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
def test_decode_with_int8_inputs_equals_hooked_transformers(native_ok, kernels):
    from sparsecraft.kernels.llama_decode import LlamaDecodePath

    m = _llama64()
    calib = torch.randint(0, 96, (8, 16), generator=torch.Generator().manual_seed(1))
    sparsecraft.prune(m, 0.5, method="sparsegpt", calib=calib, progress=False,
                      quantize={"bits": 4, "group": 64, "embedding": 8})
    path = LlamaDecodePath.from_model(m, kernels=kernels, max_positions=32, threads=2, input_bits=8)
    x8 = {c.name.replace(" (tied)", "") for c in path.choices if c.layout.endswith("-x8")}
    assert len(x8) == 2 * 7 + 1  # every decoder linear and the tied head
    hooks = []
    for name, mod in m.named_modules():
        short = name.removeprefix("model.")
        if short in x8:
            def pre(mod, args):
                xq, sx = round_inputs(args[0], 64)
                return ((xq * sx).reshape(args[0].shape),)
            hooks.append(mod.register_forward_pre_hook(pre))
    prompt = [3, 17, 5, 9, 22]
    path.decoder.reset()
    for t in prompt:
        path.decoder.step(t)
    with torch.no_grad():
        ref = m(torch.tensor([prompt])).logits[0, -1]
    for h in hooks:
        h.remove()
    with torch.no_grad():
        plain = m(torch.tensor([prompt])).logits[0, -1]
    got = path.decoder.logits()
    assert (got - ref).abs().max() < 1e-4
    assert (got - plain).abs().max() > 1e-4  # int8 inputs really change the outputs
    with pytest.raises(SparsecraftError, match="input_bits must be"):
        LlamaDecodePath.from_model(m, input_bits=4)
