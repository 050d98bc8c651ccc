"""``sparsecraft compress`` / ``decompress`` on safetensors files: sizes, JSON, byte-identical
round trip of a plain file, clear errors."""

import json

import torch
from safetensors.torch import save_file
from torch import nn

import sparsecraft
from sparsecraft.cli.main import main
from sparsecraft.formats.checkpoint import read_checkpoint


def plain_file(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    w[torch.rand_like(w) < 0.9] = 0
    tensors = {"w": w, "h": torch.randn(32, 32).half(), "b": torch.zeros(7)}
    path = tmp_path / "plain.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    return path, tensors


def test_compress_then_decompress_restores_the_exact_file(tmp_path, capsys):
    src, _ = plain_file(tmp_path)
    assert main(["compress", str(src), str(tmp_path / "c.safetensors"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["output_bytes"] < 0.5 * out["input_bytes"]
    assert out["formats"]["csr"] + out["formats"].get("bitmap", 0) == 1 and out["formats"]["dense"] == 2
    assert main(["decompress", str(tmp_path / "c.safetensors"), str(tmp_path / "d.safetensors")]) == 0
    assert "before:" in capsys.readouterr().out
    assert (tmp_path / "d.safetensors").read_bytes() == src.read_bytes()


def test_compress_a_sparsecraft_checkpoint_keeps_masks(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 8))
    sparsecraft.prune(model, 0.8, criterion="random", step=3)
    dense = sparsecraft.save(model, tmp_path / "m.safetensors")
    assert main(["compress", str(dense), str(tmp_path / "p.safetensors")]) == 0
    assert "tensors per format" in capsys.readouterr().out
    fresh = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 8))
    sparsecraft.load(fresh, tmp_path / "p.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert fresh[0].sparsecraft_meta["weight"].step == 3
    assert main(["decompress", str(tmp_path / "p.safetensors"), str(tmp_path / "back.safetensors")]) == 0
    _, doc = read_checkpoint(tmp_path / "back.safetensors")
    assert doc["packed"] == {} and doc["masks"]["0.weight_mask"]["method"] == "random"


def test_missing_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["compress", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err


def test_a_file_into_an_existing_folder_is_a_one_line_error(tmp_path, capsys):
    src, _ = plain_file(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    for cmd in ("compress", "decompress"):
        assert main([cmd, str(src), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and "is a folder" in err and err.count("\n") == 1
    assert [f.name for f in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_a_folder_of_pickles_is_refused_without_unpickling(tmp_path, capsys):
    import pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    assert main(["compress", str(d), str(tmp_path / "out")]) == 2
    assert "only safetensors weights" in capsys.readouterr().err
    assert main(["inspect", str(d / "pytorch_model.bin")]) == 2
    assert "never unpickles" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()
