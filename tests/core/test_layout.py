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
