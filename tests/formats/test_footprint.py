"""weight_footprint: the bytes save(format="auto") stores, per weight and in total."""

from __future__ import annotations

import torch

import sparsecraft
from sparsecraft.formats.checkpoint import read_checkpoint
from sparsecraft.formats.footprint import weight_footprint
from tests.oneshot.tiny import calib_ids, tiny_llama


def test_footprint_equals_what_save_stores(tmp_path):
    m = tiny_llama()
    sparsecraft.prune(m, 0.5, method="sparsegpt", quantize={"bits": 4, "group": 16}, calib=calib_ids(), progress=False)
    fp = weight_footprint(m, [r"layers\.\d+\."])
    sparsecraft.save(m, tmp_path / "m.safetensors", format="auto")
    _, doc = read_checkpoint(tmp_path / "m.safetensors")
    stored = sum(h["nbytes"] for k, h in doc["packed"].items() if ".layers." in k)
    assert fp["bytes"] == stored
    assert fp["numel"] == sum(p.numel() for n, p in m.named_parameters() if ".layers." in n and p.dim() == 2)
    # int4 at ~50%: codes + bitmap + float16 scales per 16 inputs, about 0.25 + 0.125 + 0.125
    assert 0.4 < fp["bytes_per_weight"] < 0.6 and fp["formats"] == {"qbitmap": 14}
    dense = weight_footprint(tiny_llama(), [r"layers\.\d+\."])
    assert dense["bytes_per_weight"] == 4.0 and torch.is_tensor(torch.tensor(0))
