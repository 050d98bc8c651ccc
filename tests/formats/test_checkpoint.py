import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

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
    sparsecraft.load(fresh, path)
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
        sparsecraft.load(small_mlp(), path)


def test_truncated_file_gives_clear_error(tmp_path):
    model = small_mlp()
    path = sparsecraft.save(model, tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        sparsecraft.load(small_mlp(), path)


def test_mismatched_model_names_the_tensor(tmp_path):
    path = sparsecraft.save(small_mlp(), tmp_path / "m.safetensors")
    other = nn.Sequential(nn.Linear(16, 33), nn.ReLU(), nn.Linear(33, 24), nn.ReLU(), nn.Linear(24, 4))
    with pytest.raises(CheckpointError, match=r"'0\.(weight|bias)' has shape \(32"):
        sparsecraft.load(other, path)


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = sparsecraft.save(small_mlp(0), tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError):
        sparsecraft.save(small_mlp(1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_metadata_records_pattern_target_method(tmp_path):
    from safetensors import safe_open

    model = small_mlp()
    sparsecraft.prune(model, 0.5, step=42)
    path = sparsecraft.save(model, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        doc = json.loads(f.metadata()["sparsecraft"])
    meta = doc["masks"]["0.weight_mask"]
    assert meta["pattern"] == "unstructured" and meta["method"] == "magnitude" and meta["step"] == 42
    assert meta["target"] == pytest.approx(0.5)
    assert os.path.getsize(path) > 0


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_wrong_architecture_changes_nothing_in_the_model(tmp_path):
    path = sparsecraft.save(small_mlp(0), tmp_path / "m.safetensors")
    bigger = nn.Sequential(*small_mlp(1), nn.ReLU(), nn.Linear(4, 4))  # the first five layers fit
    before = _snapshot(bigger)
    with pytest.raises(CheckpointError) as info:
        sparsecraft.load(bigger, path)
    assert all(torch.equal(before[k], v) for k, v in bigger.state_dict().items())
    assert "missing ['6.weight', '6.bias']" in str(info.value) and "nothing was loaded" in str(info.value)


def test_masks_for_weights_the_model_lacks_change_nothing(tmp_path):
    model = small_mlp(0)
    sparsecraft.prune(model, 0.5)
    path = sparsecraft.save(model, tmp_path / "m.safetensors")
    other = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24))
    before = _snapshot(other)
    with pytest.raises(sparsecraft.SparsecraftError) as info:
        sparsecraft.load(other, path)
    assert _snapshot(other).keys() == before.keys()  # no mask buffers registered on the way
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    assert "'4.weight_mask'" in str(info.value) and "nothing was loaded" in str(info.value)


def test_float32_into_a_half_model_is_refused_unless_asked(tmp_path):
    model = small_mlp(0)
    path = sparsecraft.save(model, tmp_path / "m.safetensors")
    half = small_mlp(1).half()
    before = _snapshot(half)
    words = r"'0\.(weight|bias)' is torch\.float32 but the model's is torch\.float16"
    with pytest.raises(CheckpointError, match=words):
        sparsecraft.load(half, path)
    assert all(torch.equal(before[k], v) for k, v in half.state_dict().items())
    sparsecraft.load(half, path, convert_dtype=True)
    assert torch.equal(half[0].weight, model[0].weight.half())
    with pytest.raises(CheckpointError, match="bfloat16"):
        sparsecraft.load(small_mlp(1).bfloat16(), path)


def test_an_exact_widening_loads_without_asking(tmp_path):
    model = small_mlp(0).half()
    path = sparsecraft.save(model, tmp_path / "m.safetensors")
    wide = sparsecraft.load(small_mlp(1), path)
    assert wide[0].weight.dtype == torch.float32 and torch.equal(wide[0].weight.half(), model[0].weight)


def test_load_takes_the_model_first(tmp_path):
    path = sparsecraft.save(small_mlp(0), tmp_path / "m.safetensors")
    with pytest.raises(sparsecraft.SparsecraftError, match=r"load\(model, path\)"):
        sparsecraft.load(path, small_mlp(1))


KILLED_SAVE = """
import os, signal, sys
import safetensors.torch as st
real = st.save_file
def killed(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    os.truncate(filename, 1000)  # half written
    os.kill(os.getpid(), signal.SIGKILL)
st.save_file = killed
import torch
import sparsecraft
sparsecraft.save(torch.nn.Linear(64, 64), sys.argv[1])
"""


def test_a_killed_save_keeps_the_old_file_and_its_temp_goes_on_the_next_save(tmp_path):
    path = sparsecraft.save(small_mlp(0), tmp_path / "m.safetensors")
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(sparsecraft.__file__).parents[1]), "."])}
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path)], env=env)
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert len(list(tmp_path.iterdir())) == 2  # the killed writer's temporary is left behind
    old = os.umask(0o022)
    try:
        sparsecraft.save(small_mlp(1), path)
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
