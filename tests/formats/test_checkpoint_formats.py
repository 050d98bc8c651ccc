"""Packed sparse checkpoints: bit-identical reloads, size, corruption and truncation errors."""

import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch import nn

import sparsecraft
from sparsecraft.errors import CheckpointError
from sparsecraft.formats.checkpoint import SIDECAR, read_checkpoint, save, save_state
from tests.core.helpers import Conv1D
from tests.formats.helpers import DTYPES, nm_bits, random_bits, same_bits


def pruned_mlp(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 96))
    sparsecraft.prune(m, 0.9)
    return m


def states_equal(a, b):
    return a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fmt", ["dense", "auto", "bitmap", "csr", "bsr", "nm"])
def test_reload_is_bit_identical(tmp_path, fmt):
    model = pruned_mlp()
    path = save(model, tmp_path / "m.safetensors", format=fmt)
    fresh = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 96))
    sparsecraft.load(fresh, path)
    assert states_equal(model.state_dict(), fresh.state_dict())


def test_auto_is_smaller_and_masks_derive_from_weights(tmp_path):
    model = pruned_mlp()
    dense = save(model, tmp_path / "d.safetensors")
    auto = save(model, tmp_path / "a.safetensors", format="auto", sidecar=True)
    assert os.path.getsize(auto) < 0.3 * os.path.getsize(dense)
    _, doc = read_checkpoint(auto)
    assert doc["masks"]["0.weight_mask"]["from_nonzero"] == "0.weight"
    assert doc["packed"]["0.weight"]["format"] in ("bitmap", "csr")
    assert "0.bias" not in doc["packed"]  # dense bias stays a plain tensor
    side = json.loads((tmp_path / SIDECAR).read_text())
    assert side["packed"]["0.weight"]["format"] == doc["packed"]["0.weight"]["format"]


def test_special_values_and_dtypes_round_trip(tmp_path):
    state = {
        "a": nm_bits(16, 32, 2, 4, torch.float16, 0),
        "b": nm_bits(8, 64, 1, 4, torch.bfloat16, 1),
        "c": torch.tensor([0.0, -0.0, float("nan"), 1e-45, float("inf")] * 20),
        "i": torch.arange(100),
    }
    path = save_state(state, tmp_path / "s.safetensors", format="auto")
    back, doc = read_checkpoint(path)
    assert states_equal(state, back)
    assert doc["packed"]["a"]["format"] == "nm" and doc["packed"]["b"]["params"] == {"n": 1, "m": 4}


def test_gpt2_conv1d_nm_uses_the_transposed_layout(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(nf=16, nx=32))
    with torch.no_grad():
        model[0].weight.copy_(nm_bits(16, 32, 2, 4, torch.float32, 2).t())  # (in, out)
    path = save(model, tmp_path / "c.safetensors", format="nm")
    _, doc = read_checkpoint(path)
    assert doc["packed"]["0.weight"]["layout"] == "transposed"
    fresh = nn.Sequential(Conv1D(nf=16, nx=32))
    sparsecraft.load(fresh, path)
    assert same_bits(fresh[0].weight.detach(), model[0].weight.detach())


def test_tied_weights_are_stored_once(tmp_path):
    emb = nn.Embedding(50, 16)
    head = nn.Linear(16, 50, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    path = save(model, tmp_path / "t.safetensors", format="auto")
    _, doc = read_checkpoint(path)
    assert doc["aliases"] == {"head.weight": "emb.weight"}
    fresh = nn.ModuleDict({"emb": nn.Embedding(50, 16), "head": nn.Linear(16, 50, bias=False)})
    sparsecraft.load(fresh, path)
    assert torch.equal(fresh["head"].weight, emb.weight)


def _data_offset(path, name):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return 8 + n + header[name]["data_offsets"][0]


def test_corrupted_part_names_the_tensor(tmp_path):
    path = save(pruned_mlp(), tmp_path / "m.safetensors", format="auto")
    with safe_open(str(path), "pt") as f:
        name = next(k for k in f.keys() if k.startswith("2.weight.__packed_"))
    raw = bytearray(path.read_bytes())
    raw[_data_offset(path, name)] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"2\.weight"):
        read_checkpoint(path)


def test_truncated_file_names_the_tensor(tmp_path):
    path = save(pruned_mlp(), tmp_path / "m.safetensors", format="auto")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 10])
    with pytest.raises(CheckpointError, match="truncated: tensor"):
        read_checkpoint(path)


def test_tampered_metadata_is_caught_by_the_decoded_crc(tmp_path):
    from safetensors.torch import load_file, save_file

    path = save(pruned_mlp(), tmp_path / "m.safetensors", format="auto")
    with safe_open(str(path), "pt") as f:
        doc = json.loads(f.metadata()["sparsecraft"])
    del doc["doc_crc32"]  # as in a file written before the document was sealed
    doc["packed"]["0.weight"]["crc32"] ^= 1
    save_file(load_file(path), path, metadata={"sparsecraft": json.dumps(doc)})
    with pytest.raises(CheckpointError, match=r"tensor '0\.weight' decodes to wrong bytes"):
        read_checkpoint(path)


def test_unknown_format_is_a_clear_error(tmp_path):
    with pytest.raises(sparsecraft.SparsecraftError, match="allowed: dense, auto"):
        save(pruned_mlp(), tmp_path / "m.safetensors", format="zip")


@settings(max_examples=20, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    fmt=st.sampled_from(["auto", "bitmap", "csr", "nm", "bsr"]),
    sparsity=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_any_format_any_dtype_round_trips_through_a_file(tmp_path_factory, dtype, fmt, sparsity, seed):
    state = {"w": random_bits((8, 32), dtype, sparsity, seed), "n": nm_bits(4, 16, 2, 4, dtype, seed)}
    path = save_state(state, tmp_path_factory.mktemp("h") / "s.safetensors", format=fmt)
    assert states_equal(state, read_checkpoint(path)[0])
