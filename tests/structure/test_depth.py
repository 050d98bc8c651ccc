"""Depth pruning: Block Influence checked by hand, removed blocks == skipped blocks, configs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.structure import block_influence, remove_blocks

from .models import HF_MAKERS, calib_ids


class Fixed(nn.Module):
    def __init__(self, m: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("m", m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.m


class Toy(nn.Module):
    """2-d hidden states through three fixed blocks: scale x2, rotate 90 degrees, negate."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(4, 2)
        with torch.no_grad():
            self.emb.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1], [2, -1]]))
        self.layers = nn.ModuleList([Fixed(2 * torch.eye(2)), Fixed(torch.tensor([[0.0, 1], [-1, 0]])),
                                     Fixed(-torch.eye(2))])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(input_ids)
        for b in self.layers:
            x = b(x)
        return x


def test_block_influence_is_one_minus_mean_cosine():
    # scaling keeps the direction (cos 1 -> BI 0); a 90-degree rotation: cos 0 -> BI 1; negation: BI 2
    bi = block_influence(Toy(), [torch.tensor([[0, 1, 2, 3]])])
    assert bi == pytest.approx([0.0, 1.0, 2.0], abs=1e-6)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "opt", "bert"])
def test_removed_blocks_equal_skipped_blocks(arch):
    model = HF_MAKERS[arch]()
    ids = calib_ids(2, 10)
    from sparsecraft.oneshot.blockwise import find_blocks

    stack = find_blocks(model)
    skip = copy.deepcopy(model)

    def identity(module, args, kwargs, out):  # the reference: block 0 passes its input through
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    find_blocks(skip).blocks[0].register_forward_hook(identity, with_kwargs=True)
    expected = skip(ids)[0]
    keep = remove_blocks(model, [0])
    assert keep == list(range(1, len(stack.blocks) + 1))
    assert model.config.num_hidden_layers == len(stack.blocks)
    assert torch.allclose(model(ids)[0], expected, atol=1e-5)


def test_layer_indices_and_per_layer_config_lists_follow():
    model = HF_MAKERS["qwen2"]()
    model.config.layer_types = ["full_attention", "sliding_attention", "full_attention"]
    remove_blocks(model, [1])
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1]
    assert model.config.layer_types == ["full_attention", "full_attention"]
    out = model.generate(calib_ids(1, 5), max_new_tokens=3, do_sample=False)  # the KV cache indexes by layer_idx
    assert out.shape == (1, 8)


def test_bad_block_requests():
    model = HF_MAKERS["llama"]()
    with pytest.raises(SparsecraftError, match="would leave none"):
        remove_blocks(model, [0, 1])
    with pytest.raises(SparsecraftError, match=r"out of range for the 2 blocks of model.layers"):
        remove_blocks(model, [2])
    assert len(model.model.layers) == 2
