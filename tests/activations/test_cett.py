"""CETT: a hand-checked non-monotone curve, and the exact curve against brute force on a tiny model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from sparsecraft.activations.calibrate import cett_tables
from sparsecraft.activations.cett import cett_curve, prefix_norms
from sparsecraft.activations.sites import find_sites
from sparsecraft.errors import SparsecraftError
from tests.activations.tiny import inputs, make


def _hand_curve():
    # D = 1, every column norm 1: n_i = |a_i|.
    # token 1: a = (1, -1.5, 2.5), full sum 2; removing n <= 1: 1 -> 0.5; n <= 1.5: -0.5 -> 0.25; all: 1
    # token 2: a = (2, 0, 0), full sum 2; the zeros (n = 0) change nothing; n <= 2: 1
    w = torch.tensor([[1.0, 1.0, 1.0]])
    a = torch.tensor([[1.0, -1.5, 2.5], [2.0, 0.0, 0.0]])
    return cett_curve(a, w, native=False)


def test_hand_curve_is_not_monotone_and_the_rule_takes_the_largest_t():
    c = _hand_curve()
    assert c.t.tolist() == [0.0, 1.0, 1.5, 2.0, 2.5]
    assert c.cett.tolist() == pytest.approx([0.0, 0.25, 0.125, 0.625, 1.0], abs=1e-15)
    assert c.removed.tolist() == [2, 3, 4, 5, 6] and c.tokens == 2 and c.entries == 6
    assert c.threshold(0.2) == 1.5     # a first-crossing search would stop at t = 0 (CETT(1) = 0.25)
    assert c.threshold(0.25) == 1.5
    assert c.threshold(0.1) == 0.0
    assert c.threshold(0.7) == 2.0
    assert c.threshold(1.0) == 2.5
    assert c.value(1.2) == 0.25 and c.value(1.5) == 0.125 and c.value(-1) == 0.0


def test_hand_table_is_the_curve_at_dyadic_c():
    tab = _hand_curve().table(bits=3)
    assert tab.thresholds.tolist() == [0.0, 1.5, 1.5, 1.5, 1.5, 2.0, 2.0, 2.0, 2.5]
    assert tab.calib_sparsity.tolist() == pytest.approx([2 / 6, 4 / 6, 4 / 6, 4 / 6, 4 / 6, 5 / 6, 5 / 6, 5 / 6, 1.0])
    assert tab.threshold(0.625) == 2.0 and tab.sparsity(0.125) == pytest.approx(4 / 6)
    with pytest.raises(SparsecraftError, match="not a multiple of 2\\*\\*-3"):
        tab.threshold(0.3)
    with pytest.raises(SparsecraftError, match="must be in \\[0, 1\\], got 1.5"):
        tab.threshold(1.5)


def test_zero_output_tokens_are_left_out_of_the_mean():
    w = torch.tensor([[1.0, 1.0]])
    a = torch.tensor([[1.0, -1.0], [1.0, 3.0]])  # token 1 sums to zero
    c = cett_curve(a, w, native=False)
    assert c.tokens == 1
    # token 2: removing n <= 1 leaves 1 of 4 -> 0.25
    assert c.value(1.0) == 0.25 and c.value(3.0) == 1.0


def _brute_all(a: torch.Tensor, w: torch.Tensor) -> list[tuple[float, float]]:
    """(t, CETT(t)) from the definition for every candidate threshold: 0 and every neuron norm
    seen -- for each t, the masked activations times W_down in float64."""
    a64, w64 = a.double(), w.double()
    n = a.abs() * w.norm(dim=0)  # float32, the rule's neuron norm
    cands = torch.tensor(sorted(set(n.flatten().tolist()) | {0.0}), dtype=torch.float32)
    full = (a64 @ w64.t()).norm(dim=1)
    ok = full > 0
    out = []
    for chunk in cands.split(256):
        keep = n[None] <= chunk[:, None, None]  # (T, tokens, hidden): removed neurons
        part = ((a64[None] * keep) @ w64.t()).norm(dim=2)
        cett = (part[:, ok] / full[ok]).mean(1) if ok.any() else torch.zeros(len(chunk))  # no ratio: 0
        out += list(zip(chunk.tolist(), cett.tolist()))
    return out


def _brute_threshold(pairs: list[tuple[float, float]], c: float) -> float:
    return max(t for t, v in pairs if v <= c)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_tables_of_a_tiny_model_match_brute_force(family):
    model = make(family)
    ids = inputs(family, n=2, seq_len=12)
    acts = {}
    sites = find_sites(model)
    handles = [s.projection.register_forward_pre_hook(
        lambda m, a, i=i: acts.__setitem__(i, a[0].detach().reshape(-1, a[0].shape[-1])))
        for i, s in enumerate(sites)]
    model(input_ids=ids)
    for h in handles:
        h.remove()
    curves = {}
    tables = cett_tables(model, ids, batch_size=1, bits=6, on_curve=lambda i, c: curves.__setitem__(i, c))
    assert len(tables) == 2
    for i, s in enumerate(sites):
        pairs = _brute_all(acts[i], s.down_weight())
        curve = curves[i]
        # the step function at every breakpoint equals CETT from its definition
        assert curve.t.tolist() == pytest.approx([t for t, _ in pairs], rel=1e-6)
        assert curve.cett.tolist() == pytest.approx([v for _, v in pairs], abs=1e-9)
        for c in (0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.8):
            assert curve.threshold(c) == pytest.approx(_brute_threshold(pairs, c), rel=1e-6)
        for j in (3, 10, 20):
            assert tables[i].threshold(j / 64) == pytest.approx(_brute_threshold(pairs, j / 64), rel=1e-6)


@given(seed=st.integers(0, 2**31 - 1), tokens=st.integers(1, 4), hidden=st.integers(1, 7),
       out=st.integers(1, 3), zeros=st.floats(0.0, 0.6))
@example(seed=0, tokens=2, hidden=5, out=1, zeros=0.0)
@example(seed=0, tokens=1, hidden=1, out=1, zeros=0.5)  # every token sums to zero
def test_curve_and_thresholds_equal_brute_force(seed, tokens, hidden, out, zeros):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(tokens, hidden, generator=g)
    a = a.masked_fill(torch.rand(tokens, hidden, generator=g) < zeros, 0)
    # a few repeated activation values: ties inside and across tokens
    a[:, : hidden // 2] = a[:, : hidden // 2].round()
    w = torch.randn(out, hidden, generator=g)
    pairs = _brute_all(a, w)
    curve = cett_curve(a, w, native=False)
    assert curve.t.tolist() == pytest.approx([t for t, _ in pairs], rel=1e-6)
    assert curve.cett.tolist() == pytest.approx([v for _, v in pairs], abs=1e-9)
    values = sorted({v for _, v in pairs})
    # budgets between consecutive CETT values (a budget equal to one is decided by rounding)
    for c in [0.0] + [(x + y) / 2 for x, y in zip(values, values[1:])] + [values[-1] + 0.5]:
        assert curve.threshold(c) == _brute_threshold(pairs, c)


def test_native_partial_sums_equal_the_torch_path(native_ok):
    from sparsecraft.kernels.extension import ops

    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 40, generator=g)
    wt = torch.randn(40, 135, generator=g)  # 135 columns: one full 128-wide register slice + a tail
    order = torch.stack([torch.randperm(40, generator=g) for _ in range(5)])
    a_sorted = a.gather(1, order)
    got = prefix_norms(a_sorted, order, wt, native=True)
    ref = prefix_norms(a_sorted, order, wt, native=False)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ops().cett_prefix_norms_scalar(a_sorted, order, wt), ref, rtol=1e-12, atol=1e-12)
    # by hand for the first prefix: |a_0| * ||wt[order_0]||
    assert got[0, 0].item() == pytest.approx(abs(a_sorted[0, 0].item()) * wt[order[0, 0]].double().norm().item())


def test_bad_shapes():
    with pytest.raises(SparsecraftError, match="does not take a hidden activation of width 3"):
        cett_curve(torch.ones(2, 3), torch.ones(4, 5))
    with pytest.raises(SparsecraftError, match="c must be >= 0"):
        _hand_curve().threshold(-0.1)
