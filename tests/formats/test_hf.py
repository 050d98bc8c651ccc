"""Pruned tiny Hugging Face models (random weights, no download) saved sparse and reloaded
into a normal ``from_pretrained`` model with bit-identical weights."""

import json

import pytest
import torch

import sparsecraft
from sparsecraft.formats.hf import (
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
