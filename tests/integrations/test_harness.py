"""lm-evaluation-harness on an in-memory (pruned) model: the harness's numbers equal scores computed
here independently from the model's logits, for the three task templates sparsecraft writes."""

import json
import math
import os

import pytest
import torch

import sparsecraft
from sparsecraft.errors import SparsecraftError

pytest.importorskip("lm_eval", reason="the [eval] extra (lm-eval) is not installed")
tr = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

from sparsecraft.evaluation.text_tasks import build_docs  # noqa: E402
from sparsecraft.integrations.harness import _write_task, evaluate, jsonl_task  # noqa: E402

WORDS = "the king queen fool lady lord sir good my no yes love hate night day sleep wake go come".split()


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<eos>", "<unk>", ".", ",", *WORDS, *[w.upper() for w in WORDS]])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tr.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


@pytest.fixture(scope="module")
def model_and_tok():
    tok = word_tokenizer()
    torch.manual_seed(0)
    cfg = tr.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = tr.LlamaForCausalLM(cfg).eval()
    sparsecraft.prune(model, 0.5)  # a masked model, evaluated as it is in memory
    return model, tok


def logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)


def continuation_ll(model, tok, context, continuation):
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    lp = logprobs(model, whole)
    ll = sum(float(lp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))
    greedy = all(int(lp[i - 1].argmax()) == whole[i] for i in range(len(ctx), len(whole)))
    return ll, greedy


def mc_docs():
    rng = torch.Generator().manual_seed(1)
    docs = []
    for i in range(6):
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (5,), generator=rng)]
        choices = [" " + " ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (1 + k,), generator=rng))
                   for k in range(3)]
        docs.append({"query": " ".join(words), "choices": choices, "gold": i % 3})
    return docs


def test_multiple_choice_matches_independent_scores(tmp_path, model_and_tok):
    model, tok = model_and_tok
    docs = mc_docs()
    f = tmp_path / "my task.jsonl"
    f.write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = evaluate(model, tok, [str(f)], batch_size=4)
    got = out["results"]["local_my_task"]
    acc = acc_norm = 0
    for d in docs:
        lls = [continuation_ll(model, tok, d["query"], c)[0] for c in d["choices"]]
        acc += max(range(3), key=lambda i: lls[i]) == d["gold"]
        acc_norm += max(range(3), key=lambda i: lls[i] / len(d["choices"][i])) == d["gold"]
    assert got["acc"] == pytest.approx(acc / len(docs)) and got["acc_norm"] == pytest.approx(acc_norm / len(docs))
    assert out["n_samples"]["local_my_task"] == len(docs)
    assert os.environ["HF_DATASETS_OFFLINE"] == "1" and os.environ["HF_HUB_OFFLINE"] == "1"


def speech_text():
    rng = torch.Generator().manual_seed(2)
    paras = []
    for i in range(40):
        lines = [WORDS[i % 5].upper() + "."]
        for _ in range(3 + i % 3):
            lines.append(" ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (4 + i % 4,), generator=rng)))
        paras.append("\n".join(lines) + " .")
    return "\n\n".join(paras)


def test_cloze_and_rolling_templates_match_independent_scores(tmp_path, model_and_tok):
    model, tok = model_and_tok
    docs = build_docs(speech_text(), n=8, n_rolling=3)
    docs["rolling"] = [{"text": d["text"][:150]} for d in docs["rolling"]]  # within the 64-token context
    for kind in ("cloze", "rolling"):
        _write_task(tmp_path, f"t_{kind}", kind, docs[kind])
    out = evaluate(model, tok, [str(tmp_path / "t_cloze.yaml"), str(tmp_path / "t_rolling.yaml")], batch_size=3)
    cloze = [continuation_ll(model, tok, d["context"], d["target"]) for d in docs["cloze"]]
    res = out["results"]["t_cloze"]
    assert res["acc"] == pytest.approx(sum(g for _, g in cloze) / len(cloze))
    assert res["perplexity"] == pytest.approx(math.exp(-sum(ll for ll, _ in cloze) / len(cloze)), rel=1e-4)
    total = words = 0.0
    for d in docs["rolling"]:
        ids = [tok.eos_token_id, *tok(d["text"], add_special_tokens=False)["input_ids"]]
        lp = logprobs(model, ids)
        total += sum(float(lp[i - 1, ids[i]]) for i in range(1, len(ids)))
        words += len(d["text"].split())
    assert out["results"]["t_rolling"]["word_perplexity"] == pytest.approx(math.exp(-total / words), rel=1e-4)


def test_bad_inputs_are_one_line_errors(tmp_path, model_and_tok):
    model, tok = model_and_tok
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "choices": ["b"], "gold": 0}\n')
    with pytest.raises(SparsecraftError, match="bad.jsonl:1: a multiple-choice line needs"):
        jsonl_task(bad, tmp_path)
    with pytest.raises(SparsecraftError, match="no task given"):
        evaluate(model, tok, [" "])
    no_eos = word_tokenizer()
    no_eos.eos_token = None
    with pytest.raises(SparsecraftError, match="neither an end-of-text"):
        evaluate(model, no_eos, [str(bad)])


@pytest.mark.slow  # indexes every task of the harness (about a minute)
def test_unknown_task_name(model_and_tok):
    model, tok = model_and_tok
    with pytest.raises(SparsecraftError, match="unknown task"):
        evaluate(model, tok, ["no_such_task_anywhere"])


def test_converted_model_is_evaluated_as_it_is(tmp_path, model_and_tok):
    import copy

    model, tok = model_and_tok
    f = tmp_path / "mc.jsonl"
    f.write_text("".join(json.dumps(d) + "\n" for d in mc_docs()))
    converted = copy.deepcopy(model)
    rep = sparsecraft.convert(converted, backend="torch-csr", min_sparsity=0.0)
    assert any(layer.converted for layer in rep.layers)
    a = evaluate(model, tok, [str(f)])["results"]["local_mc"]
    b = evaluate(converted, tok, [str(f)])["results"]["local_mc"]
    assert a["acc"] == b["acc"] and a["acc_norm"] == b["acc_norm"]
