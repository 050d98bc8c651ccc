"""BatchTopK selection on hand-made batches, the inference threshold, FVU, an SAE recovering a known
sparse dictionary, MLP activation collection and the brief fine-tune on a tiny Llama."""

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.batchtopk_sae import (
    BatchTopKSAE,
    batch_topk,
    estimate_threshold,
    finetune_copy,
    fvu,
    mlp_outputs,
    train_sae,
)
from tests.oneshot.tiny import calib_ids, tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


def test_batch_topk_keeps_the_k_times_b_largest_of_the_whole_batch():
    pre = torch.tensor([[3.0, -1.0, 0.5], [0.2, 2.0, 1.0]])
    assert torch.equal(batch_topk(pre, 1), torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
    # the budget is shared: one row may take every slot, the other none (per-sample top-k would not)
    pre = torch.tensor([[5.0, 4.0, 0.0], [0.1, 0.0, 0.0]])
    assert torch.equal(batch_topk(pre, 1), torch.tensor([[5.0, 4.0, 0.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(batch_topk(pre, 2), torch.tensor([[5.0, 4.0, 0.0], [0.1, 0.0, 0.0]]))
    # negative pre-activations never fire (ReLU first), even when the budget is not used up
    assert torch.equal(batch_topk(-torch.ones(2, 2), 1), torch.zeros(2, 2))


def test_threshold_is_the_mean_smallest_kept_activation():
    kept = [torch.tensor([[0.0, 2.0, 0.5]]), torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2)]
    assert estimate_threshold(kept) == pytest.approx(0.75)
    with pytest.raises(SparsecraftError, match="positive activation"):
        estimate_threshold([torch.zeros(2, 2)])


def test_inference_uses_the_threshold_per_input():
    sae = BatchTopKSAE(3, 3, k=1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    with pytest.raises(SparsecraftError, match="no inference threshold"):
        sae.encode(torch.zeros(1, 3), inference=True)
    sae.threshold = 0.5
    f = sae.encode(torch.tensor([[0.4, 0.6, -1.0], [0.7, 0.8, 0.9]]), inference=True)
    assert torch.equal(f, torch.tensor([[0.0, 0.6, 0.0], [0.7, 0.8, 0.9]]))


def test_fvu_by_hand():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert fvu(x, torch.zeros(2, 2)) == pytest.approx(1.0)
    assert fvu(x, x) == 0.0
    assert fvu(x, 0.5 * x) == pytest.approx(0.25)


def test_sae_learns_a_known_sparse_dictionary():
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(24, 16, generator=g)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    codes = torch.zeros(2048, 24)
    for row in codes:
        row[torch.randperm(24, generator=g)[:2]] = torch.rand(2, generator=g) + 0.5
    x = codes @ atoms
    sae = train_sae(x, 48, 2, steps=400, lr=3e-3)
    with torch.no_grad():
        rec, f = sae(x)
        rec_t, f_t = sae(x, inference=True)
    assert (f > 0).sum() == 2 * 2048  # BatchTopK: mean L0 exactly k
    assert fvu(x, rec) < 0.1 and fvu(x, rec_t) < 0.15
    assert 1.0 < float((f_t > 0).sum(-1).float().mean()) < 4.0
    assert sae.threshold > 0


def test_mlp_outputs_are_the_down_projection_outputs():
    model = tiny_llama(layers=3)
    ids = calib_ids(2, 8)
    seen = []
    h = model.model.layers[1].mlp.register_forward_hook(lambda m, a, o: seen.append(o.detach().reshape(-1, 32)))
    with torch.no_grad():
        model(input_ids=ids)
    h.remove()
    got = mlp_outputs(model, ids, 1)
    assert got.shape == (16, 32) and torch.allclose(got, torch.cat([seen[0][:8], seen[0][8:]]), atol=1e-6)
    with pytest.raises(SparsecraftError, match="layer must be in"):
        mlp_outputs(model, ids, 3)


def test_finetune_copy_changes_only_the_copy_and_the_chosen_blocks():
    model = tiny_llama(layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ft = finetune_copy(model, calib_ids(2, 8), steps=2, lr=1e-2, layers=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    after = ft.state_dict()
    assert not torch.equal(after["model.layers.0.mlp.down_proj.weight"], before["model.layers.0.mlp.down_proj.weight"])
    assert torch.equal(after["model.layers.1.mlp.down_proj.weight"], before["model.layers.1.mlp.down_proj.weight"])
    assert torch.equal(after["lm_head.weight"], before["lm_head.weight"])


@pytest.mark.parametrize("spec, match", [({"ks": []}, "ks"), ({"ks": [0]}, "k must be"),
                                         ({"finetune_lr": 0}, "finetune_lr"), ({"model": 3}, "model")])
def test_bad_settings_are_one_line_errors(spec, match):
    with pytest.raises(SparsecraftError, match=match):
        EXPERIMENTS.build({"type": "batchtopk-sae", **spec})


def test_experiment_end_to_end_on_a_tiny_model(monkeypatch):
    from tests.lab.tiny_protocol import patch_tiny

    patch_tiny(monkeypatch)
    res = EXPERIMENTS.build({"type": "batchtopk-sae", "layer": 1, "n_windows": 8, "seq_len": 16, "ks": [2, 8],
                             "steps": 30, "finetune_steps": 2, "finetune_lr": 1e-2, "crosscoder_k": 4,
                             "expansion": 3}).run()
    sae = res.data["sae"]
    assert [r["k"] for r in sae] == [2, 8] and all(0 <= r["fvu_batchtopk"] < 2 for r in sae)
    assert [c["kind"] for c in res.data["crosscoders"]] == ["l1", "batchtopk"]
    assert res.data["activation_change"] > 0
    for c in res.data["crosscoders"]:
        assert c["shared"] + c["base_only"] + c["ft_only"] + c["dead"] == 32 * 3
        assert c["ft_only_genuine"] <= c["ft_only_active"] <= c["ft_only"]
