import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecraft
from sparsecraft.errors import CheckpointError, SparsecraftError
from sparsecraft.moe import ATTENTION, SparseLM, SparseLMConfig, aux_loss, load_lm, memory_rows, save_lm

VARIANTS = {
    "dense": {},
    "moe": {"ffn": "moe", "moe": {"n_experts": 4, "expert_dim": 16, "top_k": 2, "n_shared": 1,
                                  "aux_loss_coef": 0.01, "z_loss_coef": 0.001}},
    "stem": {"ffn": "stem"},
    "engram": {"engram": {"layers": [1], "table_size": 31, "embed_dim": 8, "heads": 2}},
    "mixed": {"ffn": ["stem", "moe"], "moe": {"n_experts": 3, "expert_dim": 8}, "engram": {"layers": [0]}},
}


def build(name, seed=0):
    torch.manual_seed(seed)
    return SparseLM(SparseLMConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_seq_len=32,
                                   **VARIANTS[name]))


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_loss_and_causality(name):
    m = build(name).eval()
    ids = torch.randint(0, 40, (2, 12))
    out = m(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 12, 40)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits.reshape(-1, 40), ids.reshape(-1)))
    ids2 = ids.clone()
    ids2[:, 8:] = (ids2[:, 8:] + 3) % 40
    assert torch.allclose(m(input_ids=ids2).logits[:, :8], out.logits[:, :8], atol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_save_and_load_round_trip_with_masks(name, tmp_path):
    m = build(name).eval()
    sparsecraft.prune(m, 0.0, pattern="2:4", progress=False)
    path = save_lm(m, tmp_path / "m.safetensors")
    back = load_lm(path).eval()
    ids = torch.randint(0, 40, (1, 10))
    assert torch.equal(m(input_ids=ids).logits, back(input_ids=ids).logits)
    assert sparsecraft.report(back).sparsity == sparsecraft.report(m).sparsity == 0.5
    assert back.config == m.config


def test_moe_experts_are_prune_targets_with_nm_per_expert():
    m = build("moe")
    rep = sparsecraft.prune(m, 0.0, pattern="2:4", progress=False)
    names = [layer.name for layer in rep.masked]
    assert "layers.0.mlp.experts.gate_up_proj" in names and "layers.1.mlp.experts.down_proj" in names
    w = m.layers[0].mlp.experts.down_proj.detach()  # (E, d_model, expert_dim): groups along expert_dim
    assert bool(((w.reshape(4, 16, 4, 4) != 0).sum(-1) <= 2).all())


def test_aux_loss_sums_the_routers():
    m = build("moe").train()
    ids = torch.randint(0, 40, (2, 12))
    m(input_ids=ids)
    want = sum(layer.mlp.router.aux_loss for layer in m.layers)
    assert torch.equal(aux_loss(m), want) and want.item() > 0
    assert aux_loss(build("dense")) == 0.0


def test_memory_rows_are_known_from_the_ids():
    m = build("mixed")
    ids = torch.randint(0, 40, (2, 6))
    rows = memory_rows(m, ids)
    assert sorted(rows) == ["layers.0.engram", "layers.0.mlp"]
    assert torch.equal(rows["layers.0.mlp"], torch.unique(ids))
    assert torch.equal(rows["layers.0.engram"], torch.unique(m.layers[0].engram.addresses(ids)))


def test_attention_registry_is_the_hook_for_other_attention_blocks():
    @ATTENTION.register("test-scaled-identity")
    class Scaled(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        @classmethod
        def from_config(cls, config, layer):
            return cls(config.attention_options["scale"])

        def forward(self, x):
            return self.scale * x

    cfg = SparseLMConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=24, attention="test-scaled-identity",
                         attention_options={"scale": 0.0})
    m = SparseLM(cfg)
    assert isinstance(m.layers[0].attn, Scaled)
    with pytest.raises(SparsecraftError, match="attention 'standard' takes no options"):
        SparseLM(SparseLMConfig(attention_options={"gate": "head"}))


@pytest.mark.parametrize("d, word", [
    ({"d_modle": 8}, "unknown model option\\(s\\) d_modle"), ({"ffn": "sparse"}, "unknown ffn 'sparse'"),
    ({"n_layers": 2, "ffn": ["dense"]}, "ffn lists 1 kinds for n_layers=2"),
    ({"engram": {"layers": [5]}}, "engram.layers"), ({"engram": {"tables": 3}}, "unknown engram option"),
    ({"d_model": 0}, "d_model must be an integer >= 1"), ({"attention": "flash"}, "unknown attention 'flash'"),
])
def test_bad_configs_are_one_line_errors(d, word):
    with pytest.raises(SparsecraftError, match=word):
        SparseLM(SparseLMConfig.from_dict(d))


def test_too_long_input_and_foreign_checkpoint_are_errors(tmp_path):
    m = build("dense")
    with pytest.raises(SparsecraftError, match="exceeds max_seq_len=32"):
        m(input_ids=torch.zeros(1, 33, dtype=torch.long))
    sparsecraft.save(nn.Linear(2, 2), tmp_path / "lin.safetensors")
    with pytest.raises(CheckpointError, match="holds no sparsecraft LM config"):
        load_lm(tmp_path / "lin.safetensors")


@pytest.mark.parametrize("name", VARIANTS)
def test_calibrated_pruning_runs_block_by_block_on_every_variant(name):
    m = build(name)
    rep = sparsecraft.prune(m, 0.0, method="sparsegpt", pattern="2:4", calib=torch.randint(0, 40, (4, 16)),
                            progress=False)
    assert rep.sparsity == 0.5 and all(layer.sparsity == 0.5 for layer in rep.masked)
    assert not any("conv" in layer.name or "router" in layer.name for layer in rep.layers)
