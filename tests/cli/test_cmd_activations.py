"""`sparsecraft activations`: natural / top-k / CETT JSON on a tiny HF model, one-line errors."""

import json

import pytest
import torch

from sparsecraft.activations import measure
from sparsecraft.cli.main import main
from sparsecraft.data.text import build_protocol
from sparsecraft.evaluation.perplexity import perplexity

from .tiny_hf import make_tiny_hf

ARGS = ["--n-calib", "3", "--n-eval", "2", "--seq-len", "32", "--batch-size", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_hf(tmp_path_factory.mktemp("tiny"))


def _protocol(model_dir, text):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return AutoModelForCausalLM.from_pretrained(str(model_dir)).eval(), build_protocol(
        tok, str(text), n_calib=3, n_eval=2, seq_len=32)


def test_natural_sparsity_json_matches_the_meter(tiny, capsys, tmp_path):
    model_dir, text = tiny
    rc = main(["activations", "--model", str(model_dir), "--data", str(text), "--json", "--out", str(tmp_path / "o"),
               *ARGS])
    assert rc == 0
    got = json.loads(capsys.readouterr().out)
    assert got == json.loads((tmp_path / "o" / "activations.json").read_text())
    model, proto = _protocol(model_dir, text)
    rep = measure(model, proto.eval)
    assert got["mode"] == "natural" and got["sparsity"] == rep.zero_fraction
    assert got["eps_fraction"] == pytest.approx(rep.eps_fraction)
    assert [x["name"] for x in got["layers"]] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert got["ppl"] == pytest.approx(perplexity(model, proto.eval, 2, progress=False), rel=1e-6)


def test_cett_json(tiny, capsys):
    model_dir, text = tiny
    rc = main(["activations", "--model", str(model_dir), "--data", str(text), "--cett", "--ppl-increase", "0.05",
               "--steps", "4", "--json", *ARGS])
    assert rc == 0
    got = json.loads(capsys.readouterr().out)
    for key in ("sparsity", "ppl_dense", "ppl", "cett", "bracket", "layers"):
        assert key in got
    assert got["ppl"] <= got["ppl_dense"] * 1.05 + 1e-9
    assert all(set(x) == {"name", "threshold", "sparsity"} for x in got["layers"])
    assert len(got["probes"]) == 4 and got["calib_tokens"] == 96
    # the reported ppl is that of the model at the reported thresholds
    from sparsecraft.activations import Threshold

    model, proto = _protocol(model_dir, text)
    Threshold([x["threshold"] for x in got["layers"]]).apply(model)
    assert perplexity(model, proto.eval, 2, progress=False) == pytest.approx(got["ppl"], rel=1e-6)


def test_topk_text_output(tiny, capsys):
    model_dir, text = tiny
    assert main(["activations", "--model", str(model_dir), "--calib", str(text), "--topk", "16", *ARGS]) == 0
    out = capsys.readouterr().out
    assert "(topk)" in out and "75.00% exact zeros" in out


@pytest.mark.parametrize("argv,message", [
    (["--cett", "--ppl-increase", "0"], "perplexity increase p must be a finite number > 0 (0.01 = 1%), got 0.0"),
    (["--cett", "--ppl-increase", "-0.5"], "got -0.5"),
    (["--topk", "65"], "top-k k=65 is outside [1, 64] (the MLP hidden width)"),
    (["--steps", "0"], "--steps must be in [1, 16], got 0"),
    (["--cett", "--n-calib", "0"], "--n-calib must be >= 1, got 0"),
    (["--eps", "-1"], "--eps must be >= 0, got -1.0"),
])
def test_bad_input_is_one_line(tiny, capsys, argv, message):
    model_dir, text = tiny
    rc = main(["activations", "--model", str(model_dir), "--calib", str(text), *ARGS, *argv])
    err = capsys.readouterr().err.replace("\r", "\n")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err


def test_unsupported_family_and_encoder_cett(tmp_path, capsys):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tr.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    tr.BertModel(cfg).save_pretrained(str(tmp_path / "bert"))
    rc = main(["activations", "--model", str(tmp_path / "bert"), "--cett"])
    assert rc == 2 and "--cett needs perplexity, i.e. a causal LM" in capsys.readouterr().err
