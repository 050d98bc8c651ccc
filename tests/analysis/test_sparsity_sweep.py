import json

import pytest
import torch

import sparsecraft
from sparsecraft.analysis.sparsity_sweep import run_sweep

from ..cli.tiny_hf import TEXT
from ..oneshot.tiny import calib_ids, tiny_llama


def test_run_sweep_restores_dense_and_is_monotone_in_sparsity(tmp_path):
    model = tiny_llama()
    ids = calib_ids(4, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        dense_logits = model(ids).logits.clone()

    def prune_fn(m, s):
        return sparsecraft.prune(m, s, distribution="global", targets=[r"model\.layers"]).sparsity

    def logit_deviation(m):
        # grows with sparsity: global magnitude masks are nested (the 0.3 set is inside the 0.6 set);
        # perplexity of this random model is not (it is ~64 = vocab at every sparsity)
        with torch.no_grad():
            return float((m(ids).logits - dense_logits).norm() / dense_logits.norm())

    # 0.9 first: had the sweep not restored the dense weights, 0.3 would report 90% zeros
    res = run_sweep(model, [0.9, 0.0, 0.3, 0.6], prune_fn, logit_deviation, "logit deviation",
                    higher_is_better=False, progress=False)
    assert [p.sparsity for p in res.points] == [0.9, 0.0, 0.3, 0.6]
    assert res.dense == 0.0 and res.points[1].metric == 0.0
    assert [p.true_sparsity for p in res.points] == pytest.approx([0.9, 0.0, 0.3, 0.6], abs=1e-4)
    by_sparsity = [p.metric for p in sorted(res.points, key=lambda p: p.sparsity)]
    assert all(a < b for a, b in zip(by_sparsity, by_sparsity[1:])), by_sparsity  # strictly increasing
    assert res.tolerance_point == 0.0  # dense is 0: only the dense point is within 1% of it
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # back to dense
    assert not list(sparsecraft.masked_params(model))
    assert "dense-tolerance point (1%): 0.00" in res.to_markdown()
    assert res.plot(tmp_path / "s.png").stat().st_size > 1000
    assert json.loads(json.dumps(res.to_dict()))["points"][2]["sparsity"] == 0.3


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
    rc = main(["sweep", "--model", str(model_dir), "--sparsity", "0,0.5,0.9", "--calib", str(text),
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
    recipe = {"job": "sparsity-sweep", "model": str(model_dir), "criterion": "wanda", "distribution": "uniform",
              "sparsities": [0.0, 0.5], "text": str(text), "n_calib": 2, "n_eval": 2, "seq_len": 32,
              "progress": False}
    run_dir, res = run_recipe(recipe, tmp_path / "out")
    assert res["metric"] == "perplexity" and res["protocol"]["n_calib"] == 2
    assert res["points"][1]["true_sparsity"] == pytest.approx(0.5)
    assert res["points"][1]["metric"] != res["dense"]
    with pytest.raises(sparsecraft.SparsecraftError, match="ranks every layer at once"):
        run_recipe({**recipe, "distribution": "global"}, tmp_path / "out2")
