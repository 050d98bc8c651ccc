"""The Lightning callback drives RigL (runs only where lightning is installed)."""

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


def test_lightning_callback_rigl():
    from sparsecraft.integrations.lightning import SparsecraftLightningCallback

    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(96, 12, generator=g), torch.randint(0, 3, (96,), generator=g))
    cb = SparsecraftLightningCallback("rigl", sparsity=0.75, update={"every": 3, "stop": 1.0}, finalize=False)
    trainer = pl.Trainer(max_epochs=1, callbacks=[cb], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, accelerator="cpu")  # fmt: skip
    model = Tiny()
    trainer.fit(model, torch.utils.data.DataLoader(ds, batch_size=8))
    m = cb.method
    assert m is not None and m.step_count == 12 and len(m.dynamics.updates) == 3
    assert m.skipped_steps == 3  # RigL reference: no optimizer update on the 3 mask-update steps
    for t in m.targets:
        assert torch.all(t.param[~m.mask(t)] == 0)
    import sparsecraft

    rep = sparsecraft.report(model)  # 75% of the 12*24 + 24*3 = 360 weights: exactly 270 zeros
    assert sum(layer.numel - layer.nonzeros for layer in rep.layers) == 270
