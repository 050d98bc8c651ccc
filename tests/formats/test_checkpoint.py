import json
import os

import pytest
import torch
from torch import nn

import sparsecraft
from sparsecraft.errors import CheckpointError
from tests.core.helpers import small_mlp


def test_round_trip_is_bit_identical(tmp_path):
    model = small_mlp(0)
    sparsecraft.prune(
        model, 0.8, pattern="2:4", overrides=[{"match": r"^4\.", "pattern": "unstructured", "sparsity": 0.5}]
    )
    path = sparsecraft.save(model, tmp_path / "m.safetensors")
    fresh = small_mlp(7)
    sparsecraft.load(path, fresh)
    x = torch.randn(5, 16)
    assert torch.equal(model(x), fresh(x))
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    assert fresh[0].sparsecraft_meta["weight"].pattern == "2:4"
    assert sparsecraft.report(fresh).to_dict() == sparsecraft.report(model).to_dict()


def test_masks_are_stored_as_bits(tmp_path):
    from safetensors import safe_open

    model = nn.Sequential(nn.Linear(64, 64))
    sparsecraft.prune(model, 0.5)
    path = sparsecraft.save(model, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        bits = f.get_tensor("0.weight_mask.__bits__")
    assert bits.dtype == torch.uint8 and bits.numel() == 64 * 64 // 8


def test_corrupted_file_gives_clear_error(tmp_path):
    model = small_mlp()
    sparsecraft.prune(model, 0.5)
    path = sparsecraft.save(model, tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        sparsecraft.load(path, small_mlp())


def test_truncated_file_gives_clear_error(tmp_path):
    model = small_mlp()
    path = sparsecraft.save(model, tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        sparsecraft.load(path, small_mlp())


def test_mismatched_model_names_the_tensor(tmp_path):
    path = sparsecraft.save(small_mlp(), tmp_path / "m.safetensors")
    other = nn.Sequential(nn.Linear(16, 33), nn.ReLU(), nn.Linear(33, 24), nn.ReLU(), nn.Linear(24, 4))
    with pytest.raises(CheckpointError, match=r"'0\.(weight|bias)' has shape \(32"):
        sparsecraft.load(path, other)


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = sparsecraft.save(small_mlp(0), tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("sparsecraft.formats.checkpoint.save_file", boom)
    with pytest.raises(OSError):
        sparsecraft.save(small_mlp(1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_metadata_records_pattern_target_method(tmp_path):
    from safetensors import safe_open

    model = small_mlp()
    sparsecraft.prune(model, 0.5, method="gmp", step=42)
    path = sparsecraft.save(model, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        doc = json.loads(f.metadata()["sparsecraft"])
    meta = doc["masks"]["0.weight_mask"]
    assert meta["pattern"] == "unstructured" and meta["method"] == "gmp" and meta["step"] == 42
    assert meta["target"] == pytest.approx(0.5)
    assert os.path.getsize(path) > 0
