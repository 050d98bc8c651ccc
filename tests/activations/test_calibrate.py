"""cett_tables: block by block on transformers, one pass on nn.Sequential, dense model only."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.activations import apply_transform, cett_curve, cett_tables, find_sites
from sparsecraft.errors import SparsecraftError
from tests.activations.tiny import inputs, make


def _dense_acts(model, family, x):
    acts = {}
    handles = [s.projection.register_forward_pre_hook(
        lambda m, a, i=i: acts.setdefault(i, []).append(a[0].detach().reshape(-1, a[0].shape[-1])))
        for i, s in enumerate(find_sites(model))]
    if family == "sequential":
        model(x)
    else:
        for row in x.split(2):
            model(input_ids=row)
    for h in handles:
        h.remove()
    return {i: torch.cat(v) for i, v in acts.items()}


@pytest.mark.parametrize("family", ["sequential", "opt", "bert", "mistral"])
def test_tables_are_those_of_the_dense_activations(family):
    model = make(family)
    x = inputs(family, n=4, seq_len=8)
    acts = _dense_acts(model, family, x)
    tables = cett_tables(model, x if family != "sequential" else [x], batch_size=2, bits=5, native=False)
    sites = find_sites(model)
    for i, (s, tab) in enumerate(zip(sites, tables)):
        ref = cett_curve(acts[i], s.down_weight(), native=False)
        assert tab.tokens == ref.tokens
        for j in (1, 4, 9, 31):
            assert tab.threshold(j / 32) == pytest.approx(ref.threshold(j / 32), rel=1e-5)


def test_model_with_a_rule_is_refused():
    model = make("llama")
    apply_transform(model, "topk", k=4)
    with pytest.raises(SparsecraftError, match="come from the dense model.*restore"):
        cett_tables(model, inputs("llama"))


def test_empty_calibration_is_refused():
    with pytest.raises(SparsecraftError, match="non-empty \\(n, L\\) tensor, got \\(0, 8\\)"):
        cett_tables(make("llama"), torch.zeros(0, 8, dtype=torch.long))
    with pytest.raises(SparsecraftError, match="no calibration batches"):
        cett_tables(make("llama"), [])
