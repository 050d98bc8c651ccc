"""The Hugging Face Trainer callback drives RigL: exact sparsity, mask updates, zeros kept."""

import pytest
import torch
from torch import nn

import sparsecraft

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))

    def forward(self, x, labels=None):
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def test_trainer_callback_rigl(tmp_path):
    from sparsecraft.integrations.hf_trainer import SparsecraftCallback

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = [
        {"x": torch.randn(12, generator=g), "labels": int(torch.randint(0, 3, (1,), generator=g))} for _ in range(64)
    ]
    model = Tiny()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8, learning_rate=0.05,
        weight_decay=0.1, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
        dataloader_num_workers=0, max_grad_norm=1.0,
    )  # fmt: skip
    cb = SparsecraftCallback(method="rigl", sparsity=0.75, update={"every": 3, "stop": 1.0}, finalize=False)
    transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[cb]).train()
    m = cb.method
    assert m is not None and m.step_count == 12 and len(m.dynamics.updates) == 3
    assert m.skipped_steps == 3  # RigL reference: no optimizer update on the 3 mask-update steps
    budgets = [int(m.mask(t).sum()) for t in m.targets]
    total = sum(t.numel for t in m.targets)
    assert sum(budgets) == total - int(0.75 * total)
    for t in m.targets:
        assert torch.all(t.param[~m.mask(t)] == 0)
    assert sparsecraft.report(model).sparsity >= 0.75 - 1e-3
