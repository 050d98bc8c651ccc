"""The PPL-p% bisection: the bracket by hand on a fake score, and a real run on a tiny LM."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsecraft.activations import cett_curve, find_sites, ppl_p, search_cett, thresholds_of
from sparsecraft.activations.search import check_increase
from sparsecraft.errors import SparsecraftError
from sparsecraft.evaluation.perplexity import perplexity
from tests.activations.tiny import inputs, make


def _hand_setup():
    # the non-monotone hand curve of test_cett: t(c) at c = j/8 is 0, 1.5 x4, 2 x3, 2.5
    tab = cett_curve(torch.tensor([[1.0, -1.5, 2.5], [2.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]]),
                     native=False).table(bits=3)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    return model, [tab]


def test_bisection_by_hand():
    model, tables = _hand_setup()
    seen = []

    def score(m):  # the installed threshold of the only layer
        return thresholds_of(m)[0]

    res = search_cett(model, tables, score, limit=1.6, dense_score=0.0, steps=3, on_probe=seen.append)
    # c = 0.5 -> t 1.5 ok; 0.75 -> t 2 fails; 0.625 -> t 2 fails
    assert [p.c for p in seen] == [0.5, 0.75, 0.625]
    assert res.lo.c == 0.5 and res.hi.c == 0.625
    assert res.bracket == {"c_lo": 0.5, "c_hi": 0.625, "score_lo": 1.5, "score_hi": 2.0}
    assert thresholds_of(model) == [1.5]  # the model keeps the lo thresholds


def test_every_probe_failing_ends_at_zero():
    model, tables = _hand_setup()
    res = search_cett(model, tables, lambda m: thresholds_of(m)[0], limit=-1.0, dense_score=0.0, steps=2)
    assert [p.c for p in res.probes] == [0.5, 0.25, 0.0]
    assert res.lo.c == 0.0 and res.hi.c == 0.25 and thresholds_of(model) == [0.0]


def test_steps_are_checked():
    model, tables = _hand_setup()
    with pytest.raises(SparsecraftError, match="4 bisection steps need CETT tables of at least 4 bits, have 3"):
        search_cett(model, tables, lambda m: 0.0, 1.0, 0.0, steps=4)
    with pytest.raises(SparsecraftError, match="steps must be an integer >= 1, got 0"):
        search_cett(model, tables, lambda m: 0.0, 1.0, 0.0, steps=0)


@pytest.mark.parametrize("p", [0.0, -0.01, float("nan"), "1%"])
def test_bad_increase(p):
    with pytest.raises(SparsecraftError, match="perplexity increase p must be a finite number > 0"):
        check_increase(p)


def test_ppl_p_on_a_tiny_lm():
    model = make("llama")
    calib = inputs("llama", n=4, seq_len=16, seed=1)
    evals = inputs("llama", n=3, seq_len=16, seed=2)
    dense = perplexity(model, evals, progress=False)
    res = ppl_p(model, calib, evals, p=0.05, steps=5, batch_size=2)
    d = res.to_dict()
    assert d["ppl_dense"] == dense and d["ppl_target"] == pytest.approx(dense * 1.05)
    assert d["ppl"] <= d["ppl_target"]
    assert d["bracket"]["cett_lo"] == d["cett"] < d["bracket"]["cett_hi"]
    if d["bracket"]["ppl_hi"] is not None:
        assert d["bracket"]["ppl_hi"] > d["ppl_target"]
    assert [x["name"] for x in d["layers"]] == [s.name for s in find_sites(model)]
    assert len(d["probes"]) == 5 and d["eval_tokens"] == 48 and d["calib_tokens"] == 64
    # the model is left at the lo thresholds: its perplexity is the reported one
    assert thresholds_of(model) == [x["threshold"] for x in d["layers"]]
    assert math.isclose(perplexity(model, evals, progress=False), d["ppl"], rel_tol=1e-9)
    assert 0 < d["sparsity"] < 1 and d["sparsity"] == pytest.approx(sum(x["sparsity"] for x in d["layers"]) / 2)


def test_searches_share_probes_through_the_cache():
    model, tables = _hand_setup()
    calls = []

    def score(m):
        calls.append(thresholds_of(m)[0])
        return thresholds_of(m)[0]

    cache = {}
    first = search_cett(model, tables, score, limit=1.6, dense_score=0.0, steps=3, cache=cache)
    assert len(calls) == 3 and sorted(cache) == [0.5, 0.625, 0.75]
    second = search_cett(model, tables, score, limit=2.2, dense_score=0.0, steps=3, cache=cache)
    # 0.5 and 0.75 come from the cache, only 0.875 is new
    assert [p.c for p in second.probes] == [0.5, 0.75, 0.875] and len(calls) == 4
    assert second.lo.c == 0.875 and thresholds_of(model) == [2.0] and first.lo.c == 0.5
