import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sparsecraft.layout import layout_for
from tests.core.helpers import Conv1D


@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3))
def test_conv_row_view_round_trip_and_groups_run_along_input_channels(out, cin, kh, kw):
    conv = nn.Conv2d(cin, out, (kh, kw))
    lay = layout_for(conv, conv.weight)
    rows = lay.to_rows(conv.weight.detach())
    assert rows.shape == (out, kh * kw * cin)
    assert torch.equal(lay.from_rows(rows), conv.weight.detach())
    # consecutive columns = consecutive input channels at the same kernel position
    w = conv.weight.detach()
    assert torch.equal(rows[:, :cin], w[:, :, 0, 0])


def test_gpt2_conv1d_row_view_is_the_transpose():
    m = Conv1D(nf=6, nx=8)
    lay = layout_for(m, m.weight)
    assert (lay.rows, lay.cols) == (6, 8)
    assert torch.equal(lay.to_rows(m.weight), m.weight.t())
    assert torch.equal(lay.from_rows(lay.to_rows(m.weight)), m.weight)


def test_empty_layers_are_not_targets_and_nothing_divides_by_zero():
    import sparsecraft
    from sparsecraft.targets import find_targets

    for empty in (nn.Linear(0, 4), nn.Linear(4, 0)):
        lay = layout_for(empty, empty.weight)
        assert lay.rows * lay.cols == 0  # no ZeroDivisionError computing the row view
        model = nn.Sequential(empty, nn.Linear(4 if empty.out_features else 2, 3))
        assert [t.name for t in find_targets(model)] == ["1.weight"]
        rep = sparsecraft.prune(model, 0.5, progress=False)
        assert [layer.name for layer in rep.layers] == ["1.weight"] and rep.sparsity == 0.5  # 6 of 12 or 3 of 6
        assert [layer.name for layer in sparsecraft.report(model).layers] == ["1.weight"]
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sparsecraft.attach(model, opt, method="rigl", total_steps=10, sparsity=0.5)
    alone = nn.Sequential(nn.Linear(0, 4))
    try:
        sparsecraft.prune(alone, 0.5, progress=False)
    except sparsecraft.SparsecraftError as e:
        assert "no prunable layer" in str(e)
    else:
        raise AssertionError("a model with only an empty layer has nothing to prune")
