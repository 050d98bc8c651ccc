"""Token routing on a tiny random Llama: the factors by hand, skipping == removing blocks, the
router's extremes, the budget met after training, distillation reaching the router only."""

import copy
import math

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.ftp_router import (
    TokenRouter,
    compare,
    routed,
    skip_update,
    skipped_fraction,
    token_factors,
    train_router,
)
from sparsecraft.structure.depth import remove_blocks
from tests.oneshot.tiny import calib_ids, tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_token_factors_by_hand():
    x = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]])
    prev = torch.tensor([[[3.0, 4.0], [0.0, 1.0], [0.0, -2.0]]])
    f = token_factors(x, prev, 1, 3)
    assert torch.allclose(f[0, :, 0], torch.tensor([0.0, math.log(2), math.log(3)]) / math.log(2048))
    rms = torch.tensor([math.sqrt(12.5), math.sqrt(0.5), math.sqrt(2.0)])
    assert torch.allclose(f[0, :, 1], torch.log(rms), atol=1e-5)
    assert torch.allclose(f[0, :, 2], torch.tensor([0.0, 1.0, 2.0]), atol=1e-6)  # 1 - cos: same, orthogonal, opposite
    assert torch.allclose(f[0, :, 3], torch.full((3,), 0.5))
    assert torch.equal(token_factors(x, None, 0, 3)[0, :, 2], torch.zeros(3))


def test_skip_update():
    x, y = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    out = skip_update(x, y, torch.tensor([[0.0, 1.0]]))
    assert torch.equal(out[0, 0], torch.zeros(3)) and torch.equal(out[0, 1], torch.ones(3))


def test_static_skipping_equals_removing_the_blocks():
    model = tiny_llama(layers=4)
    ids = calib_ids(2, 12)
    shorter = copy.deepcopy(model)
    remove_blocks(shorter, [1, 2])
    with routed(model, "static", skip_blocks=[1, 2]) as rec:
        out = logits(model, ids)
    assert torch.allclose(out, logits(shorter, ids), atol=1e-5)
    assert skipped_fraction(rec) == pytest.approx(0.5)
    assert torch.allclose(logits(model, ids), logits(tiny_llama(layers=4), ids))  # hooks removed


def test_router_extremes_and_a_block_bias():
    model = tiny_llama(layers=3)
    ids = calib_ids(2, 10)
    router = TokenRouter(3)
    with torch.no_grad():
        router.mlp[2].weight.zero_()
        router.mlp[2].bias.zero_()
        router.block_bias.copy_(torch.tensor([1.0, -1.0, 1.0]))
    with routed(model, "hard", router=router, threshold=0.0) as rec:
        out = logits(model, ids)
    with routed(model, "static", skip_blocks=[1]):
        ref = logits(model, ids)
    assert torch.allclose(out, ref) and skipped_fraction(rec) == pytest.approx(1 / 3)
    with routed(model, "hard", router=router, threshold=-5.0):
        assert torch.allclose(logits(model, ids), logits(tiny_llama(layers=3), ids), atol=1e-6)


def test_trained_router_meets_the_budget_and_distillation_only_moves_the_router():
    model = tiny_llama(layers=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = calib_ids(4, 16)
    r0, _ = train_router(model, ids, 0.25, guide_steps=50, distill_steps=0, calibration_rounds=0)
    router, thr = train_router(model, ids, 0.25, guide_steps=50, distill_steps=3, calibration_rounds=2)
    assert any(not torch.equal(a, b) for a, b in zip(r0.state_dict().values(), router.state_dict().values()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    with routed(model, "hard", router=router, threshold=thr) as rec:
        logits(model, ids)
    assert abs(skipped_fraction(rec) - 0.25) < 0.05


def test_compare_on_a_tiny_model():
    model = tiny_llama(layers=4)
    res = compare(model, calib_ids(3, 16), calib_ids(2, 16, seed=1), [0.25, 0.5], guide_steps=30)
    assert [r["fraction"] for r in res["rows"]] == [0.25, 0.5]
    assert len(res["rows"][1]["blocks_skipped"]) == 2
    bi = res["block_influence"]
    assert res["rows"][0]["blocks_skipped"] == [min(range(4), key=lambda i: bi[i])]
    assert all(r["static"] > 0 and r["router"] > 0 and 0 <= r["router_fraction"] <= 1 for r in res["rows"])


@pytest.mark.parametrize("spec, match", [({"fractions": []}, "fractions"), ({"fractions": [0.95]}, "fraction"),
                                         ({"seq_len": 2}, "seq_len"), ({"model": ""}, "model")])
def test_bad_settings_are_one_line_errors(spec, match):
    with pytest.raises(SparsecraftError, match=match):
        EXPERIMENTS.build({"type": "ftp-router", **spec})


def test_routing_errors():
    model = tiny_llama(layers=2)
    with pytest.raises(SparsecraftError, match="needs a router"):
        with routed(model, "hard"):
            pass
    with pytest.raises(SparsecraftError, match="out of range"):
        with routed(model, "static", skip_blocks=[5]):
            pass
    with pytest.raises(SparsecraftError, match="router has 3 blocks"):
        with routed(model, "hard", router=TokenRouter(3)):
            pass


def test_experiment_end_to_end_on_a_tiny_model(monkeypatch):
    from tests.lab.tiny_protocol import patch_tiny

    patch_tiny(monkeypatch)
    res = EXPERIMENTS.build({"type": "ftp-router", "fractions": [0.25], "n_calib": 2, "n_eval": 2, "seq_len": 16,
                             "guide_steps": 20}).run()
    assert res.data["rows"][0]["fraction"] == 0.25 and res.data["dense"] > 1
    assert "router ppl" in res.to_markdown()


def test_keep_first_never_skips_the_first_token():
    model = tiny_llama(layers=2)
    ids = calib_ids(2, 8)
    router = TokenRouter(2)
    with torch.no_grad():
        router.mlp[2].weight.zero_()
        router.mlp[2].bias.fill_(-1.0)  # every score -1 < 0: skip everything
    with routed(model, "hard", router=router, keep_first=True) as rec:
        logits(model, ids)
    assert all(torch.equal(k[:, 0], torch.ones(2)) and not k[:, 1:].any() for k in rec["keep"])
    assert skipped_fraction(rec) == pytest.approx(7 / 8)
    with routed(model, "hard", router=router) as rec:
        logits(model, ids)
    assert skipped_fraction(rec) == 1.0
