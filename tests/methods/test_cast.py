"""CAST-style: masks every T1 steps, decay on masked-out weights only, scale, distillation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods import attach


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4))


@pytest.mark.parametrize("mode", ["adaptive", "decoupled"])
def test_decay_hits_masked_out_weights_only(mode: str) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sp = attach(model, opt, method="cast", decay=0.5, decay_mode=mode, scale=False,
                total_steps=20)
    w0 = model[0].weight.detach().clone()
    keep = sp.mask(sp.targets[0]).clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero task gradient: only the decay acts (SGD lr 1: W -= 0.5 (1-E) W)
    assert torch.allclose(model[0].weight, torch.where(keep, w0, 0.5 * w0))


def test_masks_change_only_every_t1_steps_and_finalize_folds_scale() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = attach(model, opt, method="cast", pattern="2:4", total_steps=30, decay=0.0)
    assert len(opt.param_groups) == 2  # the layer scale is trained
    history = []
    for i in range(12):
        if i == 3:  # a big change of W between updates must not move the mask ...
            with torch.no_grad():
                model[0].weight.mul_(torch.linspace(0.1, 3.0, 8))
        opt.zero_grad()
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
        history.append(sp.mask(sp.targets[0]).clone())
    assert all(torch.equal(history[i], history[0]) for i in range(9))  # steps 1..9
    assert not torch.equal(history[9], history[0])  # ... until the step-10 update
    assert sp.scales["0.weight"].item() != 1.0
    x = torch.randn(3, 8)
    before = model(x).detach()
    sp.finalize()
    assert torch.allclose(model(x), before, atol=1e-6)
    assert ((model[0].weight != 0).reshape(4, 2, 4).sum(-1) == 2).all()


def test_distillation_loss_formula() -> None:
    model = _model()
    sp = attach(model, None, method="cast", teacher=True, kd_weight=0.25, kd_temperature=2.0,
                total_steps=5)
    x = torch.randn(5, 8)
    out = model(x)
    t = sp.teacher(x)
    kd = (F.softmax(t / 2, -1) * (F.log_softmax(t / 2, -1) - F.log_softmax(out / 2, -1))).sum(-1)
    expect = 0.75 * 1.0 + 0.25 * 4 * kd.mean()
    got = sp.regularize(torch.tensor(1.0), inputs=x, outputs=out)
    assert torch.allclose(got, expect, atol=1e-6)
    assert not any(p.requires_grad for p in sp.teacher.parameters())


def _adam_run(every: int) -> tuple[torch.optim.Optimizer, nn.Module, object]:
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sp = attach(model, opt, method="cast", pattern="2:4", decay=0.0, scale=False,
                update={"every": every}, total_steps=30)  # fmt: skip
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        opt.zero_grad()
        model(torch.randn(4, 8, generator=g)).pow(2).mean().backward()
        opt.step()
    return opt, model, sp


def test_mask_refresh_leaves_adam_moments_of_entering_weights_alone() -> None:
    """Step 10 refreshes E (after the Adam update); a run without refresh saw the very same
    gradients, so every moment must be identical -- entering weights were trained densely."""
    opt, model, sp = _adam_run(every=10)
    ref_opt, ref_model, ref_sp = _adam_run(every=1000)
    entered = sp.mask(sp.targets[0]) & ~ref_sp.mask(ref_sp.targets[0])
    assert entered.any()  # the refresh did bring weights into the mask
    w, rw = model[0].weight, ref_model[0].weight
    assert torch.equal(w, rw)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[w][key], ref_opt.state[rw][key])
        assert (opt.state[w][key][entered] != 0).all()


def test_distillation_on_a_hugging_face_causal_lm() -> None:
    transformers = pytest.importorskip("transformers", reason="Hugging Face models need transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    model = transformers.LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sp = attach(model, opt, method="cast", pattern="2:4", teacher=True, kd_weight=0.5, kd_temperature=2.0,
                total_steps=4)  # fmt: skip
    ids = torch.randint(0, 32, (2, 6))
    out = model(input_ids=ids, labels=ids)  # an output object, not a tensor
    t_logits = sp.teacher(input_ids=ids).logits
    s, t = out.logits.reshape(-1, 32) / 2, t_logits.reshape(-1, 32) / 2  # 12 tokens
    kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1).mean()  # per token
    expect = 0.5 * out.loss + 0.5 * 4 * kl
    for inputs in ({"input_ids": ids, "labels": ids}, ids):  # an HF batch or the ids tensor
        got = sp.regularize(out.loss, inputs=inputs, outputs=out)
        assert torch.allclose(got, expect, atol=1e-6)
    got.backward()
    opt.step()  # trains through the sparse forward
    assert not any(p.requires_grad for p in sp.teacher.parameters())


def test_distillation_rejects_outputs_without_logits() -> None:
    model = _model()
    sp = attach(model, None, method="cast", teacher=True, total_steps=5)
    with pytest.raises(SparsecraftError, match="logits tensor or an output with .logits"):
        sp.regularize(torch.tensor(1.0), inputs=torch.randn(2, 8), outputs=(torch.randn(2, 4),))
