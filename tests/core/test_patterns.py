import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import sparsecraft
from sparsecraft.errors import ShapeError, SparsecraftError
from sparsecraft.layout import layout_for
from sparsecraft.patterns import NM, Block, Channel, PerRow, Unstructured, count_to_prune, parse_pattern
from tests.core.helpers import Conv1D

NM_CASES = [(1, 4), (2, 4), (4, 8), (2, 8)]


def assert_valid_nm(module, n, m):
    w = module.weight.detach()
    rows = layout_for(module, w).to_rows(w)
    groups = (rows != 0).reshape(rows.shape[0], -1, m).sum(-1)
    assert torch.all(groups <= n)
    mask = module.weight_mask
    kept = layout_for(module, w).to_rows(mask).reshape(rows.shape[0], -1, m).sum(-1)
    assert torch.all(kept == n)


@pytest.mark.parametrize("n,m", NM_CASES)
@pytest.mark.parametrize("kind", ["linear", "conv2d", "conv1d-gpt2", "conv1d"])
def test_nm_masks_are_valid_on_every_layer_type(kind, n, m):
    torch.manual_seed(n * 10 + m)
    module = {
        "linear": lambda: nn.Linear(32, 12),
        "conv2d": lambda: nn.Conv2d(16, 8, 3),
        "conv1d-gpt2": lambda: Conv1D(nf=12, nx=32),
        "conv1d": lambda: nn.Conv1d(8, 4, 5),
    }[kind]()
    rep = sparsecraft.prune(module, 0.0, pattern=f"{n}:{m}")
    assert_valid_nm(module, n, m)
    assert rep.layers[0].sparsity == pytest.approx(1 - n / m)
    assert rep.layers[0].pattern == f"{n}:{m}"


def test_nm_keeps_the_largest_in_each_group_by_hand():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.1, 0.4, 0.3, 0.2]])
    keep = NM(2, 4).mask(scores)
    assert keep.tolist() == [[True, False, True, False, False, True, True, False]]


def test_gpt2_conv1d_nm_runs_along_the_input_dimension():
    m = Conv1D(nf=3, nx=8)
    with torch.no_grad():
        m.weight.copy_(torch.arange(24, dtype=torch.float32).reshape(8, 3))
    sparsecraft.prune(m, 0.0, pattern="2:4")
    # stored (in, out): along the input dim (rows of the stored weight) the 2 largest survive
    w = m.weight.detach()
    for col in range(3):
        assert (w[0:4, col] != 0).tolist() == [False, False, True, True]


def test_nm_shape_error_names_the_layer():
    model = nn.Sequential(nn.Linear(10, 4))
    with pytest.raises(ShapeError, match=r"'0.weight'.*divisible by 4"):
        sparsecraft.prune(model, 0.0, pattern="2:4")


def test_skip_unfit_skips_instead_of_raising():
    model = nn.Sequential(nn.Linear(10, 8), nn.Linear(8, 4))
    rep = sparsecraft.prune(model, 0.0, pattern="2:4", skip_unfit=True)
    by_name = {l.name: l for l in rep.layers}
    assert by_name["0.weight"].pattern == "dense"
    assert by_name["1.weight"].pattern == "2:4"


@given(st.integers(1, 40), st.integers(1, 40), st.floats(0, 1))
def test_unstructured_prunes_exactly_floor_s_n(rows, cols, s):
    scores = torch.randn(rows, cols)
    keep = Unstructured().mask(scores, s)
    assert int((~keep).sum()) == count_to_prune(s, rows * cols)


@given(st.integers(1, 30), st.floats(0, 1))
def test_unstructured_is_exact_even_with_ties(cols, s):
    scores = torch.zeros(3, cols)  # all tied
    keep = Unstructured().mask(scores, s)
    assert int((~keep).sum()) == count_to_prune(s, 3 * cols)


def test_count_is_float_safe():
    assert count_to_prune(0.29, 100) == 29
    assert count_to_prune(0.7, 10) == 7


@given(st.integers(1, 20), st.integers(1, 20), st.floats(0, 1))
def test_per_row_prunes_the_same_count_in_every_row(rows, cols, s):
    keep = PerRow().mask(torch.randn(rows, cols), s)
    assert torch.all((~keep).sum(1) == count_to_prune(s, cols))


def test_block_and_channel_by_hand():
    scores = torch.tensor([[1.0, 1.0, 5.0, 5.0], [1.0, 1.0, 5.0, 5.0], [9.0, 9.0, 0.0, 0.0], [9.0, 9.0, 0.0, 0.0]])
    keep = Block(2, 2).mask(scores, 0.5)
    assert keep.tolist() == [
        [False, False, True, True],
        [False, False, True, True],
        [True, True, False, False],
        [True, True, False, False],
    ]
    keep = Channel().mask(scores, 0.25)
    assert keep.all(1).tolist() == [False, True, True, True]


def test_parse_pattern_forms_and_errors():
    assert parse_pattern("2:4") == NM(2, 4)
    assert parse_pattern("block:4x2") == Block(4, 2)
    assert parse_pattern({"type": "block", "h": 2, "w": 2}) == Block(2, 2)
    assert parse_pattern("channel") == Channel()
    with pytest.raises(SparsecraftError, match="0 < N < M"):
        parse_pattern("4:4")
    with pytest.raises(SparsecraftError, match="allowed"):
        parse_pattern("diagonal")
