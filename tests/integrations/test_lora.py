"""LoRA through peft on a pruned model: the merge keeps the mask exactly (W + M * s B A)."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import set_mask

peft = pytest.importorskip("peft", reason="the [peft] extra (peft) is not installed")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

from sparsecraft.integrations.lora import lora_model, masked_base_layers, merge_lora  # noqa: E402
from tests.oneshot.tiny import calib_ids, tiny_llama  # noqa: E402


def hand_model(masked_lora: bool):
    """fc: 3 x 4 weight, mask keeps the diagonal and (0, 3); LoRA r=1, alpha=2 (scale 2) with
    A = [1, 2, 3, 4], B = [1, 0, -1]^T."""
    model = nn.Sequential(OrderedDict(fc=nn.Linear(4, 3, bias=False)))
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]))
    keep = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    set_mask(model.fc, keep)
    if masked_lora:
        pm = lora_model(model, r=1, lora_alpha=2)
    else:
        pm = peft.get_peft_model(model, peft.LoraConfig(r=1, lora_alpha=2, target_modules=["fc"]))
    layer = pm.base_model.model.fc
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor([[1.0, 2, 3, 4]]))
        layer.lora_B["default"].weight.copy_(torch.tensor([[1.0], [0.0], [-1.0]]))
    return pm


# s B A = 2 * [[1, 2, 3, 4], [0, 0, 0, 0], [-1, -2, -3, -4]]; kept entries of W: (0,0)=1, (0,3)=4, (1,1)=6, (2,2)=11
MERGED = torch.tensor([[1.0 + 2, 0, 0, 4 + 8], [0, 6 + 0, 0, 0], [0, 0, 11 - 6, 0]])


@pytest.mark.parametrize("masked_lora", [True, False])
def test_merge_by_hand(masked_lora):
    merged = merge_lora(hand_model(masked_lora))
    assert torch.equal(merged.fc.weight.detach(), MERGED)
    assert torch.equal(merged.fc.weight_mask, MERGED != 0)  # mask kept, not a peft wrapper any more
    assert type(merged.fc) is nn.Linear


def test_masked_lora_forward_is_the_merged_model():
    pm = hand_model(masked_lora=True)
    x = torch.tensor([[1.0, -1.0, 0.5, 2.0]])
    got = pm(x)
    assert torch.allclose(got, x @ MERGED.T)


def test_peft_merge_and_unload_of_masked_lora_keeps_the_mask():
    merged = hand_model(masked_lora=True).merge_and_unload()
    assert torch.equal(merged.fc.weight.detach(), MERGED)


def test_plain_peft_merge_would_fill_the_pruned_weights():
    """Why merge_lora exists: peft's own merge of an ordinary adapter destroys the sparsity."""
    merged = hand_model(masked_lora=False).merge_and_unload()
    assert int((merged.fc.weight == 0).sum()) < int((MERGED == 0).sum())


def per_layer(model):
    return [(layer.name, layer.nonzeros, layer.numel) for layer in sparsecraft.report(model).layers]


@pytest.mark.parametrize("masked_lora", [True, False])
def test_a_kept_weight_that_is_exactly_zero_stays_zero(masked_lora):
    """SparseGPT's update leaves a few kept weights at exactly 0 (3 of 53M in SmolLM2 2:4): the
    merge must not make them nonzero, or report() shows another sparsity after the merge."""
    pm = hand_model(masked_lora)
    base = pm.base_model.model.fc.get_base_layer()
    with torch.no_grad():
        base.weight[0, 3] = 0.0  # kept by the mask, value 0
    merged = merge_lora(pm)
    expected = MERGED.clone()
    expected[0, 3] = 0.0  # not 0 + 8
    assert torch.equal(merged.fc.weight.detach(), expected)


@pytest.mark.parametrize("masked_lora", [True, False])
def test_plain_loop_then_merge_keeps_report(masked_lora):
    model = tiny_llama()
    sparsecraft.prune(model, 0.5, pattern="2:4")
    before = per_layer(model)
    if masked_lora:
        pm = lora_model(model, r=4, lora_alpha=8)
    else:
        pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"]))
    params = [p for p in pm.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in pm.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = calib_ids(4, 16)
    for _ in range(4):
        loss = pm(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        trained = pm(input_ids=ids).logits
    merged = merge_lora(pm)
    assert per_layer(merged) == before
    with torch.no_grad():
        out = merged(input_ids=ids).logits
    if masked_lora:  # the model trained is the model merged
        assert torch.allclose(out, trained, atol=1e-5)


def test_hf_trainer_with_callback_then_merge(tmp_path):
    from sparsecraft.integrations.hf_trainer import SparsecraftCallback

    model = tiny_llama()
    sparsecraft.prune(model, 0.5)
    before = per_layer(model)
    pm = lora_model(model, r=4, lora_alpha=8)
    ids = calib_ids(16, 16)
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
        save_strategy="no", logging_strategy="no", use_cpu=True, dataloader_num_workers=0,
    )  # fmt: skip
    cb = SparsecraftCallback(method="static", from_model=True, targets=masked_base_layers(pm), finalize=False)
    lora_b = pm.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    start = lora_b.detach().clone()
    transformers.Trainer(model=pm, args=args, train_dataset=data, callbacks=[cb]).train()
    assert cb.method is not None and cb.method.step_count == 3
    assert not torch.equal(lora_b.detach(), start)  # the adapters trained
    assert per_layer(merge_lora(pm)) == before


def test_errors():
    with pytest.raises(SparsecraftError, match="expects a peft model"):
        merge_lora(nn.Linear(2, 2))
    with pytest.raises(SparsecraftError, match="no masked Linear"):
        lora_model(nn.Sequential(nn.Linear(2, 2)))
