"""compressed-tensors sparse folders: hand-built fixtures of both layouts, hostile configs, the
writer's round trip, the CLI, and (where the package is installed) a cross-check with
compressed-tensors 0.14.0.1 itself."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

import sparsecraft
from sparsecraft.cli.main import main
from sparsecraft.errors import CheckpointError, SparsecraftError
from sparsecraft.formats.compressed_tensors import read_config, read_state, save_compressed_tensors
from sparsecraft.formats.hf import decompress_dir, load_pretrained_sparse

tf = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

WRAP = {"quant_method": "compressed-tensors", "version": "0.14.0.1", "transform_config": {}}


def sparse_config(fmt, **extra):
    return {"format": fmt, "global_sparsity": 0.5, "sparsity_structure": "unstructured", "targets": ["Linear"],
            "ignore": ["lm_head"], **extra}


def fixture_dir(tmp_path, tensors, sparsity, key="quantization_config", wrap=None):
    d = tmp_path / "ct"
    d.mkdir()
    config = {"model_type": "x", key: {**(wrap or WRAP), "sparsity_config": sparsity}}
    (d / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def bitmask_tensors():
    # layer "a": 2 x 10, row 0 keeps columns 1 and 9 (bytes 2, 2), row 1 keeps column 0 (bytes 1, 0)
    return {"a.shape": torch.tensor([2, 10]), "a.compressed": torch.tensor([1.5, -2.0, 3.0]),
            "a.bitmask": torch.tensor([[2, 2], [1, 0]], dtype=torch.uint8), "a.row_offsets": torch.tensor([0, 2]),
            "norm.weight": torch.tensor([1.0, 2.0])}


def test_reads_hand_built_sparse_bitmask(tmp_path):
    state, info = read_state(fixture_dir(tmp_path, bitmask_tensors(), sparse_config("sparse-bitmask")))
    want = torch.zeros(2, 10)
    want[0, 1], want[0, 9], want[1, 0] = 1.5, -2.0, 3.0
    assert set(state) == {"a.weight", "norm.weight"} and torch.equal(state["a.weight"], want)
    assert info["format"] == "sparse-bitmask" and info["compressed"] == 1 and info["notes"] == []


def test_reads_hand_built_sparse_24_bitmask(tmp_path):
    # 1 x 8: bits 1, 3, 4, 5 -> byte 58; values 5, -1, 2, 0
    tensors = {"m.shape": torch.tensor([[1], [8]]), "m.compressed": torch.tensor([[5.0, -1.0, 2.0, 0.0]]),
               "m.bitmask": torch.tensor([[58]], dtype=torch.uint8)}
    state, _ = read_state(fixture_dir(tmp_path, tensors, sparse_config("sparse-24-bitmask", sparsity_structure="2:4")))
    assert torch.equal(state["m.weight"], torch.tensor([[0, 5.0, 0, -1.0, 2.0, 0, 0, 0]]))


def test_first_release_layout(tmp_path):
    # "compression_config", parameter names as prefixes, 1-D tensors compressed too
    tensors = {"a.weight.shape": torch.tensor([1, 4]), "a.weight.compressed": torch.tensor([9.0]),
               "a.weight.bitmask": torch.tensor([[8]], dtype=torch.uint8), "a.weight.row_offsets": torch.tensor([0]),
               "a.bias.shape": torch.tensor([3]), "a.bias.compressed": torch.tensor([4.0]),
               "a.bias.bitmask": torch.tensor([1], dtype=torch.uint8), "a.bias.row_offsets": torch.tensor(0)}
    d = fixture_dir(tmp_path, tensors, {"format": "sparse-bitmask"}, key="compression_config",
                    wrap={"version": "0.3.0"})
    state, info = read_state(d)
    assert torch.equal(state["a.weight"], torch.tensor([[0, 0, 0, 9.0]]))
    assert torch.equal(state["a.bias"], torch.tensor([4.0, 0, 0]))
    assert info["config_key"] == "compression_config"


def test_format_is_checked_before_the_weights_are_read(tmp_path):
    d = fixture_dir(tmp_path, bitmask_tensors(), sparse_config("marlin-24"))
    (d / "model.safetensors").write_bytes(b"garbage")  # never opened
    with pytest.raises(CheckpointError, match="format is \"marlin-24\"; sparsecraft reads dense, sparse-bitmask"):
        read_state(d)
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="format is"):
        read_config(fixture_dir(tmp_path / "x", {}, sparse_config("__import__('os')")))


@pytest.mark.parametrize("wrap, message", [
    ({**WRAP, "config_groups": {"group_0": {"targets": ["Linear"]}}}, "config_groups"),
    ({**WRAP, "format": "float-quantized"}, "float-quantized"),
    ({**WRAP, "transform_config": {"config_groups": {"u": {}}}}, "transform_config"),
    ({**WRAP, "quant_method": "gptq", "sparsity_config": {}}, None),
])
def test_quantized_checkpoints_are_refused(tmp_path, wrap, message):
    d = fixture_dir(tmp_path, bitmask_tensors(), sparse_config("sparse-bitmask"), wrap=wrap)
    if message is None:  # another quant_method (with a sparsity_config): named, not read as ours
        with pytest.raises(CheckpointError, match="quant_method is \"gptq\""):
            read_state(d)
        return
    with pytest.raises(CheckpointError, match=message):
        read_state(d)


def test_unknown_keys_are_ignored_with_a_note(tmp_path):
    d = fixture_dir(tmp_path, bitmask_tensors(), sparse_config("sparse-bitmask", shiny=1),
                    wrap={**WRAP, "future_field": True})
    _, info = read_state(d)
    assert any("sparsity_config.shiny" in n for n in info["notes"]) and any("future_field" in n for n in info["notes"])
    assert decompress_dir(d, tmp_path / "out")["notes"] == info["notes"]


def test_load_warns_about_ignored_keys(tmp_path):
    model = tiny_llama()
    sparsecraft.prune(model, 0.5)
    out = save_compressed_tensors(model, tmp_path / "ct")
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"]["sparsity_config"]["shiny"] = 1
    (out / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="sparsity_config.shiny is not part of the layout"):
        assert weights_equal(model, load_pretrained_sparse(out))


@pytest.mark.parametrize("change, message", [
    ({"a.compressed": torch.tensor([1.5, -2.0])}, "marks 3 values"),
    ({"a.row_offsets": None}, "has parts"),
    ({"a.weight": torch.zeros(2, 10)}, "both compressed and plain"),
    ({"a.shape": torch.tensor([4096, 4096])}, "needs uint8"),
])
def test_damaged_weights_are_errors_never_wrong_weights(tmp_path, change, message):
    tensors = bitmask_tensors()
    for k, v in change.items():
        if v is None:
            tensors.pop(k)
        else:
            tensors[k] = v
    with pytest.raises(CheckpointError, match=message):
        read_state(fixture_dir(tmp_path, tensors, sparse_config("sparse-bitmask")))


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    d = fixture_dir(tmp_path, bitmask_tensors(), sparse_config("sparse-bitmask"))
    outside = tmp_path / "outside.safetensors"
    os.replace(d / "model.safetensors", outside)
    os.symlink(outside, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="outside the folder"):
        read_state(d)


def tiny_llama():
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return tf.LlamaForCausalLM(cfg).eval()


def weights_equal(a, b):
    sa = {k: v for k, v in a.state_dict().items() if not k.endswith("_mask")}
    sb = b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("pattern, fmt", [("unstructured", "sparse-bitmask"), ("2:4", "sparse-24-bitmask")])
def test_save_load_round_trip(tmp_path, pattern, fmt):
    model = tiny_llama()
    sparsecraft.prune(model, 0.5, pattern=pattern)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = -0.0  # pruned or not: stored as +0.0
    out = sparsecraft.save(model, tmp_path / "ct", format="compressed-tensors")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["sparsity_config"]["format"] == fmt and config["quant_method"] == "compressed-tensors"
    assert "lm_head" in config["sparsity_config"]["ignore"]
    back = load_pretrained_sparse(out)
    assert weights_equal(model, back)  # -0.0 == +0.0 numerically
    assert not torch.signbit(back.model.layers[0].mlp.up_proj.weight[0, 0])
    before = sparsecraft.report(model, targets=[r"layers"]).listed_sparsity
    assert sparsecraft.report(back, targets=[r"layers"]).listed_sparsity == before


def test_writer_refuses_24_for_an_unstructured_model(tmp_path):
    model = tiny_llama()
    sparsecraft.prune(model, 0.5)
    with pytest.raises(CheckpointError, match="not 2:4"):
        save_compressed_tensors(model, tmp_path / "ct", format="sparse-24-bitmask")
    assert not (tmp_path / "ct").exists()  # nothing written
    with pytest.raises(SparsecraftError, match="allowed: compressed-tensors"):
        save_compressed_tensors(model, tmp_path / "ct", format="bitmap")


def test_cli_decompress(tmp_path, capsys):
    model = tiny_llama()
    sparsecraft.prune(model, 0.5, pattern="2:4")
    save_compressed_tensors(model, tmp_path / "ct")
    assert main(["decompress", str(tmp_path / "ct"), str(tmp_path / "dense"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["formats"]["sparse-24-bitmask"] == 14
    config = json.loads((tmp_path / "dense" / "config.json").read_text())
    assert "quantization_config" not in config
    assert weights_equal(model, tf.LlamaForCausalLM.from_pretrained(str(tmp_path / "dense")))
    assert decompress_dir(tmp_path / "ct", tmp_path / "dense")["output"] == str(tmp_path / "dense")  # replaces


def test_cross_check_with_compressed_tensors(tmp_path):
    ct = pytest.importorskip(
        "compressed_tensors",
        reason="compressed-tensors==0.14.0.1 pins transformers<5; install it and loguru with --no-deps --target DIR, "
               "add DIR to PYTHONPATH to run this cross-check")
    from compressed_tensors.compressors import ModelCompressor

    for pattern, fmt in (("unstructured", "sparse-bitmask"), ("2:4", "sparse-24-bitmask")):
        model = tiny_llama()
        sparsecraft.prune(model, 0.5, pattern=pattern)
        dense = {k: v for k, v in model.state_dict().items() if not k.endswith("_mask")}
        ours = save_compressed_tensors(model, tmp_path / f"ours-{pattern[0]}")
        theirs = dict(ModelCompressor.from_pretrained(str(ours)).sparsity_compressor.decompress(str(ours)))
        assert theirs and all(torch.equal(theirs[k], dense[k]) for k in theirs)
        plain = tiny_llama()
        plain.load_state_dict(dense, strict=False)
        mc = ModelCompressor.from_pretrained_model(plain, sparsity_config_or_format=fmt)
        mc.sparsity_config.targets, mc.sparsity_config.ignore = ["Linear"], ["lm_head"]
        folder = tmp_path / f"theirs-{pattern[0]}"
        plain.save_pretrained(str(folder), state_dict=mc.compress(plain))
        mc.update_config(str(folder))
        state, info = read_state(folder)
        assert info["format"] == fmt and info["compressed"] == 14 and info["version"] == ct.__version__
        assert all(torch.equal(state[k], dense[k]) for k in state)


def test_save_needs_a_transformers_model(tmp_path):
    with pytest.raises(SparsecraftError, match="needs a transformers config"):
        sparsecraft.save(torch.nn.Linear(4, 4), tmp_path / "x", format="compressed-tensors")
    with pytest.raises(SparsecraftError, match="no place for extra"):
        sparsecraft.save(tiny_llama(), tmp_path / "x", format="sparse-bitmask", extra={"a": 1})
    assert not (tmp_path / "x").exists()
