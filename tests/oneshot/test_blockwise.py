import pytest
import torch

from sparsecraft.masks import set_mask
from sparsecraft.oneshot.blockwise import block_targets, capture_inputs, find_blocks, run_sequential

from .tiny import calib_ids, tiny_bert, tiny_gpt2, tiny_llama, tiny_opt


@pytest.mark.parametrize(
    "make, prefix, names",
    [
        (tiny_llama, "model.layers", {"self_attn.q_proj", "mlp.down_proj"}),
        (tiny_gpt2, "transformer.h", {"attn.c_attn", "mlp.c_proj"}),
        (tiny_opt, "model.decoder.layers", {"self_attn.k_proj", "fc2"}),
        (tiny_bert, "encoder.layer", {"attention.self.query", "output.dense"}),
    ],
)
def test_find_blocks_and_targets(make, prefix, names):
    model = make()
    stack = find_blocks(model)
    assert stack.prefix == prefix and len(stack.blocks) == 2
    per_block = block_targets(model, stack)
    got = {t.module_name.split(".", len(prefix.split(".")) + 1)[-1] for t in per_block[0]}
    assert names <= got
    everything = [t.name for ts in per_block for t in ts]
    assert not any("embed" in n or "lm_head" in n or "wte" in n for n in everything)


def test_targets_and_ignore_regexes():
    model = tiny_llama()
    stack = find_blocks(model)
    per_block = block_targets(model, stack, targets=[r"mlp\."], ignore=[r"down_proj"])
    names = [t.name for ts in per_block for t in ts]
    assert names and all("mlp" in n and "down_proj" not in n for n in names)
    with pytest.raises(Exception, match="outside the block stack"):
        block_targets(model, stack, targets=["lm_head"])


def test_capture_stops_at_first_block():
    model = tiny_llama()
    stack = find_blocks(model)
    calls = []
    stack.blocks[1].register_forward_pre_hook(lambda m, a: calls.append(1))
    inputs = capture_inputs(model, stack, [calib_ids(2), calib_ids(3)])
    assert [i.hidden.shape[0] for i in inputs] == [2, 3]
    assert "position_embeddings" in inputs[0].kwargs
    assert not calls  # the forward never reached block 1


def test_sequential_runner_feeds_pruned_outputs_forward():
    model = tiny_llama()
    stack = find_blocks(model)
    ids = calib_ids(3)
    seen = {}

    def prune_block(i, block, inputs):
        seen[i] = torch.cat([x.hidden.clone() for x in inputs])
        for mod in block.modules():
            if isinstance(mod, torch.nn.Linear):
                keep = mod.weight.abs() > mod.weight.abs().median()
                set_mask(mod, keep)

    def recorder(store):
        def hook(module, args):
            store.setdefault("x", args[0].clone())

        return hook

    dense_in1 = {}
    h = stack.blocks[1].register_forward_pre_hook(recorder(dense_in1))
    model(input_ids=ids)
    h.remove()
    run_sequential(model, stack, [ids], prune_block)
    pruned_in1 = {}
    stack.blocks[1].register_forward_pre_hook(recorder(pruned_in1))
    model(input_ids=ids)
    # block 1 was calibrated on the outputs of the *pruned* block 0, not the dense one
    assert torch.allclose(seen[1], pruned_in1["x"], atol=1e-5)
    assert not torch.allclose(seen[1], dense_in1["x"], atol=1e-3)
