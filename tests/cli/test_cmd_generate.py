"""``sparsecraft prune --quantize`` writes a folder that ``generate``, ``inspect`` and
``load_pretrained_sparse`` read; generate's tokens are transformers' greedy tokens; bad input is
one line."""

from __future__ import annotations

import json

import pytest
import torch

from sparsecraft.cli.main import main

from .tiny_hf import make_tiny_hf

ARGS = ["--n-calib", "4", "--n-eval", "2", "--seq-len", "32", "--batch-size", "2"]


@pytest.fixture(scope="module")
def quantized_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    model_dir, text = make_tiny_hf(root)
    out = root / "run"
    rc = main(["prune", "--model", str(model_dir), "--method", "sparsegpt", "--sparsity", "0.5", "--quantize", "4",
               "--group-size", "16", "--quantize-embedding", "8", "--calib", str(text), "--out", str(out), *ARGS])
    assert rc == 0
    return model_dir, text, out


def test_prune_quantize_reports_and_saves_packed(quantized_run, capsys):
    _, _, out = quantized_run
    report = json.loads((out / "report.json").read_text())
    row = report["rows"][-1]
    assert row["quantize"] == {"bits": 4, "group": 16, "sym": True, "embedding": 8}
    assert 0.3 < row["footprint"]["bytes_per_weight"] < 0.6
    assert (out / "model" / "sparse_model.safetensors").is_file() and not (out / "model" / "model.safetensors").exists()
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "int4 g16 sym (qbitmap)" in printed and "int8 g16 sym (qdense)" in printed


def test_generate_equals_transformers_greedy(quantized_run, capsys):
    _, _, out = quantized_run
    assert main(["generate", "--model", str(out), "--prompt", "line 3: the quick", "--max-new-tokens", "12",
                 "--threads", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["new_tokens"] == 12 and res["tokens_per_s"] > 0 and isinstance(res["text"], str)
    from transformers import AutoTokenizer

    from sparsecraft.formats.hf import load_pretrained_sparse

    hf = load_pretrained_sparse(out)  # plain transformers, dequantized weights
    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    ids = tok("line 3: the quick", add_special_tokens=False)["input_ids"]
    seq = list(ids)
    with torch.no_grad():  # greedy by hand: the argmax of the full-sequence logits, 12 times
        for _ in range(12):
            seq.append(int(hf(torch.tensor([seq])).logits[0, -1].argmax()))
    assert res["tokens"] == seq[len(ids):]
    assert main(["generate", "--model", str(out), "--prompt", "the", "--max-new-tokens", "3"]) == 0
    assert "tokens/s" in capsys.readouterr().out


@pytest.mark.parametrize("argv,msg", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--max-positions", "4"], "exceed --max-positions 4"),
])
def test_generate_user_errors(quantized_run, capsys, argv, msg):
    _, _, out = quantized_run
    assert main(["generate", "--model", str(out), "--prompt", "the quick brown fox", *argv]) == 2
    assert msg in capsys.readouterr().err


def test_generate_missing_model(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "neither a built-in name" in capsys.readouterr().err


@pytest.mark.parametrize("extra,msg", [
    (["--method", "gptq", "--quantize", "4", "--group-size", "48"], "quantization group 48 does not divide"),
    (["--method", "gptq", "--quantize", "4", "--group-size", "24"], "multiple of 16"),
    (["--method", "gptq"], "--method gptq quantizes: give --quantize"),
    (["--method", "gptq", "--sparsity", "0.5", "--quantize", "4", "--group-size", "16"],
     "gptq quantizes without pruning"),
    (["--criterion", "wanda", "--quantize", "4", "--group-size", "16"], "quantize needs a one-shot method"),
    (["--method", "gqsa", "--pattern", "2:4", "--quantize", "4", "--group-size", "16"], "gqsa prunes groups"),
    (["--method", "sparsegpt", "--quantize-embedding", "8"], "need --quantize"),
])
def test_prune_quantize_user_errors(quantized_run, tmp_path, capsys, extra, msg):
    model_dir, text, _ = quantized_run
    rc = main(["prune", "--model", str(model_dir), *extra, "--calib", str(text), "--out", str(tmp_path / "r"), *ARGS])
    assert rc == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bars
    assert last.startswith("error: ") and msg in last
    assert not (tmp_path / "r" / "results.json").exists()  # refused before anything was written
