"""Reading a safetensors checkpoint a few tensors at a time; writing one shard at a time."""

import json

import pytest
import torch
from safetensors.torch import save_file

from sparsecraft.distributed.shards import INDEX, ShardedCheckpoint, ShardWriter, read_header
from sparsecraft.errors import SparsecraftError


def test_writer_and_reader_round_trip(tmp_path):
    a, b, c = torch.randn(4, 3).bfloat16(), torch.arange(5, dtype=torch.int64), torch.randn(2)
    w = ShardWriter(tmp_path, 2)
    w.write({"x.a": a, "x.b": b})
    w.write({"y.c": c})
    with pytest.raises(SparsecraftError, match="sized for 2 shards"):
        w.write({"z": c})
    (tmp_path / "config.json").write_text("{}")
    w.finish()
    index = json.loads((tmp_path / INDEX).read_text())
    assert index["weight_map"] == {"x.a": "model-00001-of-00002.safetensors", "x.b": "model-00001-of-00002.safetensors",
                                   "y.c": "model-00002-of-00002.safetensors"}
    assert index["metadata"]["total_size"] == 4 * 3 * 2 + 5 * 8 + 2 * 4
    ck = ShardedCheckpoint(tmp_path)
    assert sorted(ck.names()) == ["x.a", "x.b", "y.c"]
    assert ck.info["x.a"] == (torch.bfloat16, (4, 3)) and ck.nbytes(["x.b"]) == 40
    assert ck.float_dtype() == torch.bfloat16  # most floating-point bytes
    got = ck.read(["y.c", "x.a"])
    assert torch.equal(got["x.a"], a) and torch.equal(got["y.c"], c)
    with pytest.raises(SparsecraftError, match="is not in the checkpoint"):
        ck.read(["nope"])


def test_single_file_and_bad_files(tmp_path):
    save_file({"w": torch.ones(2, 2)}, str(tmp_path / "model.safetensors"))
    assert ShardedCheckpoint(tmp_path).read(["w"])["w"].sum() == 4
    assert read_header(tmp_path / "model.safetensors")["w"]["shape"] == [2, 2]
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 20)
    with pytest.raises(SparsecraftError, match="not a readable safetensors file"):
        read_header(tmp_path / "junk.safetensors")
    with pytest.raises(SparsecraftError, match="has no model.safetensors"):
        ShardedCheckpoint(tmp_path / "junk")
