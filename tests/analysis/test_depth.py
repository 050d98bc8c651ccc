"""Depth metrics on a tiny Llama, against references that do not use the hooks."""

from __future__ import annotations

import copy
import math

import torch

from sparsecraft.analysis.depth import depth_report, output_variance, skip_block
from tests.kv.helpers import tiny_llama

WINDOWS = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(0))


def test_variance_matches_hidden_states():
    model = tiny_llama(layers=3)
    v_in, var = output_variance(model, WINDOWS, batch_size=2)
    with torch.no_grad():
        hs = model(WINDOWS, output_hidden_states=True).hidden_states  # embeddings, block 0, 1, (normed last)
    torch.testing.assert_close(v_in, float(hs[0].double().var(unbiased=False)))
    for layer in (0, 1):
        torch.testing.assert_close(var[layer], float(hs[layer + 1].double().var(unbiased=False)))
    assert len(var) == 3


def test_skipping_a_block_equals_deleting_it():
    model = tiny_llama(layers=3)
    short = copy.deepcopy(model)
    del short.model.layers[1]
    short.config.num_hidden_layers = 2
    with torch.no_grad():
        with skip_block(model.model.layers[1]):
            got = model(WINDOWS, use_cache=False).logits
        ref = short(WINDOWS, use_cache=False).logits
        full = model(WINDOWS).logits  # the hook is gone again
    torch.testing.assert_close(got, ref)
    assert (full - ref).abs().max() > 1e-4


def test_report_effectiveness_is_relative_ppl_change():
    model = tiny_llama(layers=2)
    rep = depth_report(model, WINDOWS)
    nll = torch.nn.functional.cross_entropy
    with torch.no_grad():
        logits = model(WINDOWS).logits
        ppl = math.exp(float(nll(logits[:, :-1].reshape(-1, 64), WINDOWS[:, 1:].reshape(-1))))
    assert math.isclose(rep.ppl, ppl, rel_tol=1e-5)
    assert rep.effectiveness == [s / rep.ppl - 1 for s in rep.skip_ppl]
    assert rep.growth[0] == rep.variance[0] / rep.input_variance and rep.growth[1] == rep.variance[1] / rep.variance[0]
