"""Pruned tiny Hugging Face models (random weights, no download) saved sparse and reloaded
into a normal ``from_pretrained`` model with bit-identical weights."""

import json

import pytest
import torch

import sparsecraft
from sparsecraft.errors import CheckpointError
from sparsecraft.formats.hf import (
    DENSE_WEIGHTS,
    SPARSE_WEIGHTS,
    compress_dir,
    decompress_dir,
    load_pretrained_sparse,
    save_pretrained_sparse,
)

tf = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf


def tiny_llama():
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return tf.LlamaForCausalLM(cfg)


def tiny_gpt2():
    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=16,
                                            bos_token_id=0, eos_token_id=0))


def bit_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k].view(torch.uint8), sb[k].view(torch.uint8)) for k in sa
    )


def test_llama_2_4_round_trip_is_bit_identical(tmp_path):
    model = tiny_llama()
    sparsecraft.prune(model, 0.5, pattern="2:4", targets=["model.layers"])
    sparsecraft.remove_masks(model)
    save_pretrained_sparse(model, tmp_path / "sparse")
    back = load_pretrained_sparse(tmp_path / "sparse")
    assert type(back).__name__ == "LlamaForCausalLM" and bit_equal(model, back)
    doc = json.loads((tmp_path / "sparse" / "sparsity_config.json").read_text())
    assert doc["packed"]["model.layers.0.mlp.up_proj.weight"]["format"] == "nm"
    assert doc["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(ids).logits, back(ids).logits)


def test_gpt2_conv1d_masked_model_round_trip(tmp_path):
    model = tiny_gpt2()
    sparsecraft.prune(model, 0.5, pattern="2:4", targets=["transformer.h"])  # masks stay attached
    save_pretrained_sparse(model, tmp_path / "sparse", format="auto")
    doc = json.loads((tmp_path / "sparse" / "sparsity_config.json").read_text())
    attn = doc["packed"]["transformer.h.0.attn.c_attn.weight"]
    assert (attn["format"], attn["layout"]) == ("nm", "transposed")  # groups along the inputs
    back = load_pretrained_sparse(tmp_path / "sparse")
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("_mask")}
    got = back.state_dict()
    assert own.keys() == got.keys()
    assert all(torch.equal(own[k].view(torch.uint8), got[k].view(torch.uint8)) for k in own)


def test_compress_and_decompress_directories(tmp_path):
    model = tiny_llama()
    sparsecraft.prune(model, 0.9, targets=["model.layers"])
    sparsecraft.remove_masks(model)
    model.save_pretrained(tmp_path / "dense")
    out = compress_dir(tmp_path / "dense", tmp_path / "sparse")
    assert (tmp_path / "sparse" / SPARSE_WEIGHTS).is_file() and out["ratio"] < 0.6
    decompress_dir(tmp_path / "sparse", tmp_path / "again")
    back = tf.LlamaForCausalLM.from_pretrained(tmp_path / "again")
    assert bit_equal(model, back)


def test_compress_dir_finds_gpt2_conv1d_layouts_from_the_config(tmp_path):
    model = tiny_gpt2()
    sparsecraft.prune(model, 0.5, pattern="2:4", targets=["transformer.h"])
    sparsecraft.remove_masks(model)
    model.save_pretrained(tmp_path / "dense")
    compress_dir(tmp_path / "dense", tmp_path / "sparse")
    doc = json.loads((tmp_path / "sparse" / "sparsity_config.json").read_text())
    mlp = doc["packed"]["transformer.h.1.mlp.c_fc.weight"]
    assert (mlp["format"], mlp["params"], mlp["layout"]) == ("nm", {"n": 2, "m": 4}, "transposed")
    assert bit_equal(model, load_pretrained_sparse(tmp_path / "sparse"))


def plain_hf_dir(root, name="dense", config='{"model_type": "none"}', scale=1.0):
    """A folder shaped like a Hugging Face model (config + model.safetensors), no transformers needed."""
    from safetensors.torch import save_file

    d = root / name
    d.mkdir()
    (d / "config.json").write_text(config)
    (d / "tokenizer.json").write_text("{}")
    torch.manual_seed(0)
    w = torch.randn(32, 64) * scale
    w[torch.rand_like(w) < 0.9] = 0
    save_file({"a.weight": w, "b.weight": torch.randn(16, 16)}, d / DENSE_WEIGHTS, metadata={"format": "pt"})
    return d


def test_a_failed_compress_over_an_existing_output_keeps_it_whole(tmp_path, monkeypatch):
    compress_dir(plain_hf_dir(tmp_path, "v1"), tmp_path / "out")
    old = {f.name: f.read_bytes() for f in (tmp_path / "out").iterdir()}
    src = plain_hf_dir(tmp_path, "v2", config='{"model_type": "none", "version": 2}', scale=2.0)

    def killed(*a, **k):
        raise OSError("killed while writing the weights")

    monkeypatch.setattr("sparsecraft.formats.hf.compress_file", killed)
    with pytest.raises(OSError):
        compress_dir(src, tmp_path / "out")
    assert {f.name: f.read_bytes() for f in (tmp_path / "out").iterdir()} == old
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out", "v1", "v2"]


def test_a_side_file_linking_out_of_the_folder_is_refused(tmp_path):
    src = plain_hf_dir(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (src / "notes.txt").symlink_to(secret)
    with pytest.raises(CheckpointError, match="'notes.txt'.*outside the folder"):
        compress_dir(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (src / "notes.txt").unlink()
    (src / "notes.txt").symlink_to(src / "tokenizer.json")  # a link inside the folder is fine
    compress_dir(src, tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "{}"
    (src / "broken.txt").symlink_to(src / "gone.txt")  # would be dropped silently from the output
    with pytest.raises(CheckpointError, match="'broken.txt'.*broken link"):
        compress_dir(src, tmp_path / "out2")


def write_index(src, doc):
    (src / DENSE_WEIGHTS).rename(src / "model-00001-of-00001.safetensors")
    (src / f"{DENSE_WEIGHTS}.index.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return src


@pytest.mark.parametrize("doc,words", [
    ("{not json", "not valid JSON"),
    ([1, 2], "no 'weight_map'"),
    ({"weight_map": {"a.weight": 7}}, r"weight_map\['a.weight'\] is 7"),
    ({"weight_map": {"a.weight": "../outside.safetensors"}}, r'is "\.\./outside\.safetensors"; expected'),
    ({"weight_map": {"a.weight": "gone.safetensors"}}, "does not exist"),
])
def test_malformed_or_escaping_indexes_are_one_line_errors(tmp_path, doc, words):
    from safetensors.torch import save_file

    save_file({"a.weight": torch.ones(4, 4)}, tmp_path / "outside.safetensors")
    src = write_index(plain_hf_dir(tmp_path), doc)
    with pytest.raises(CheckpointError, match=words):
        compress_dir(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_index_that_disagrees_with_its_shards_is_refused(tmp_path):
    shard = "model-00001-of-00001.safetensors"
    src = write_index(plain_hf_dir(tmp_path), {"weight_map": {"a.weight": shard}})  # b.weight unlisted
    with pytest.raises(CheckpointError, match="'b.weight' is not mapped to this shard"):
        compress_dir(src, tmp_path / "out")
    (src / f"{DENSE_WEIGHTS}.index.json").write_text(json.dumps(
        {"weight_map": {"a.weight": shard, "b.weight": shard, "c.weight": shard}}))
    with pytest.raises(CheckpointError, match=r"\['c.weight'\] of the index are in none of the shards"):
        compress_dir(src, tmp_path / "out")


def test_an_unrelated_or_enclosing_output_folder_is_not_replaced(tmp_path):
    src = plain_hf_dir(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(CheckpointError, match="not a sparse model folder"):
        compress_dir(src, mine)
    assert (mine / "thesis.tex").read_text() == "years of work"
    with pytest.raises(CheckpointError, match="contains the input"):
        compress_dir(src, tmp_path)
    with pytest.raises(CheckpointError, match="not a Hugging Face model folder"):
        decompress_dir(compress_dir(src, tmp_path / "sparse") and tmp_path / "sparse", mine)


def test_save_pretrained_sparse_failing_midway_keeps_the_old_folder(tmp_path, monkeypatch):
    model = tiny_gpt2()
    save_pretrained_sparse(model, tmp_path / "s")
    (tmp_path / "s" / "README.md").write_text("mine")
    old = {f.name: f.read_bytes() for f in (tmp_path / "s").iterdir()}
    model.config.n_positions = 32

    def killed(*a, **k):
        raise OSError("killed while writing the weights")

    monkeypatch.setattr("safetensors.torch.save_file", killed)
    with pytest.raises(OSError):
        save_pretrained_sparse(model, tmp_path / "s")
    assert {f.name: f.read_bytes() for f in (tmp_path / "s").iterdir()} == old
    monkeypatch.undo()
    save_pretrained_sparse(model, tmp_path / "s")
    assert (tmp_path / "s" / "README.md").read_text() == "mine"  # files of the user's stay
    assert json.loads((tmp_path / "s" / "config.json").read_text())["n_positions"] == 32
