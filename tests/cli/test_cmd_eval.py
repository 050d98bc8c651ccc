"""``sparsecraft eval`` on a compressed-tensors folder and on a masked checkpoint (tiny model, local task)."""

import json

import pytest
import torch

import sparsecraft
from sparsecraft.cli.main import main

pytest.importorskip("lm_eval", reason="the [eval] extra (lm-eval) is not installed")
tr = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

from tests.integrations.test_harness import mc_docs, word_tokenizer  # noqa: E402


def test_eval_compressed_tensors_folder_and_masked_checkpoint(tmp_path, capsys):
    from sparsecraft.formats.compressed_tensors import save_compressed_tensors

    tok = word_tokenizer()
    torch.manual_seed(0)
    cfg = tr.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = tr.LlamaForCausalLM(cfg).eval()
    dense_dir = tmp_path / "dense"
    model.save_pretrained(str(dense_dir))
    tok.save_pretrained(str(dense_dir))
    sparsecraft.prune(model, 0.5, pattern="2:4")
    sparsecraft.save(model, tmp_path / "masks.safetensors")
    save_compressed_tensors(model, tmp_path / "ct", tokenizer=tok)
    task = tmp_path / "mc.jsonl"
    task.write_text("".join(json.dumps(d) + "\n" for d in mc_docs()))

    assert main(["eval", "--model", str(tmp_path / "ct"), "--tasks", str(task), "--json"]) == 0
    ct = json.loads(capsys.readouterr().out)
    assert ct["loaded_as"] == "compressed-tensors" and ct["true_sparsity"] == 0.5
    assert ct["results"]["local_mc"]["acc"] >= 0

    out = tmp_path / "r.json"
    args = ["eval", "--model", str(dense_dir), "--checkpoint", str(tmp_path / "masks.safetensors"),
            "--tasks", str(task), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "local_mc" in printed and "acc" in printed
    masked = json.loads(out.read_text())
    assert masked["loaded_as"] == "dense + masks" and masked["true_sparsity"] == 0.5
    assert masked["results"] == ct["results"]  # the same weights, stored two ways


def test_eval_bad_task_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "x.jsonl"
    bad.write_text("not json\n")
    from tests.cli.tiny_hf import make_tiny_hf

    d, _ = make_tiny_hf(tmp_path)
    tok = tr.AutoTokenizer.from_pretrained(str(d))
    tok.eos_token = "<unk>"
    tok.save_pretrained(str(d))
    assert main(["eval", "--model", str(d), "--tasks", str(bad)]) == 2
    assert "x.jsonl:1 is not JSON" in capsys.readouterr().err
