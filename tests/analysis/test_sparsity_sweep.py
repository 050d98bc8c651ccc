import json

import pytest
import torch

import sparsecraft
from sparsecraft.analysis.sparsity_sweep import run_sweep
from sparsecraft.evaluation.perplexity import perplexity

from ..cli.tiny_hf import TEXT
from ..oneshot.tiny import calib_ids, tiny_llama


def test_run_sweep_restores_dense_and_is_monotone_in_sparsity(tmp_path):
    model = tiny_llama()
    ids = calib_ids(4, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def prune_fn(m, s):
        return sparsecraft.prune(m, s, distribution="global", include=[r"model\.layers"]).sparsity

    res = run_sweep(model, [0.0, 0.3, 0.6, 0.9], prune_fn, lambda m: perplexity(m, ids, progress=False),
                    "perplexity", higher_is_better=False, progress=False)
    assert [p.sparsity for p in res.points] == [0.0, 0.3, 0.6, 0.9]
    assert res.points[0].metric == res.dense
    assert [p.true_sparsity for p in res.points[1:]] == pytest.approx([0.3, 0.6, 0.9], abs=1e-4)
    assert res.tolerance_point == 0.0 or res.tolerance_point >= 0.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # back to dense
    assert not list(sparsecraft.masked_params(model))
    assert "dense-tolerance point" in res.to_markdown()
    assert res.plot(tmp_path / "s.png").stat().st_size > 1000
    json.dumps(res.to_dict())


def make_tiny_bert_dir(root):
    tr = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator([TEXT], trainers.WordPieceTrainer(vocab_size=80, special_tokens=specials))
    fast = tr.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    cfg = tr.BertConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    out = root / "tiny-bert"
    tr.BertModel(cfg, add_pooling_layer=False).save_pretrained(str(out))
    fast.save_pretrained(str(out))
    text = root / "t.txt"
    text.write_text(TEXT)
    return out, text


def test_sweep_cli_on_an_encoder(tmp_path, capsys):
    from sparsecraft.cli.main import main

    model_dir, text = make_tiny_bert_dir(tmp_path)
    out = tmp_path / "sweep"
    rc = main(["sweep", "--model", str(model_dir), "--sparsities", "0,0.5,0.9", "--text", str(text),
               "--n-sentences", "16", "--out", str(out), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metric"] == "embedding cosine similarity"
    sims = [p["metric"] for p in doc["points"]]
    assert sims[0] == pytest.approx(1.0, abs=1e-6) and sims[-1] < sims[0]
    assert doc["points"][1]["true_sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert (out / "sweep.png").is_file() and (out / "sweep.md").is_file()


def test_sweep_job_on_a_causal_lm_with_wanda(tmp_path):
    from sparsecraft.jobs.recipe import run_recipe

    from ..cli.tiny_hf import make_tiny_hf

    model_dir, text = make_tiny_hf(tmp_path)
    recipe = {"job": "sparsity-sweep", "model": str(model_dir), "method": "wanda", "distribution": "uniform",
              "sparsities": [0.0, 0.5], "text": str(text), "n_calib": 2, "n_eval": 2, "seqlen": 32,
              "progress": False}
    run_dir, res = run_recipe(recipe, tmp_path / "out")
    assert res["metric"] == "perplexity" and res["protocol"]["n_calib"] == 2
    assert res["points"][1]["true_sparsity"] == pytest.approx(0.5)
    assert res["points"][1]["metric"] != res["dense"]
    with pytest.raises(sparsecraft.SparsecraftError, match="global distribution"):
        run_recipe({**recipe, "distribution": "global"}, tmp_path / "out2")
