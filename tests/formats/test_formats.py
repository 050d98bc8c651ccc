"""Round trips (bitwise, hypothesis) and exact byte sizes of every packed format."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.formats import pack, unpack
from sparsecraft.layout import layout_for
from tests.core.helpers import Conv1D
from tests.formats.helpers import DTYPES, nm_bits, random_bits, same_bits

FORMATS = [("dense", {}), ("bitmap", {}), ("csr", {}), ("bsr", {"br": 2, "bc": 4}), ("auto", {})]


@settings(max_examples=40, deadline=None)
@given(
    rows=st.sampled_from([2, 4, 6]),
    cols=st.sampled_from([4, 8, 12, 300]),
    dtype=st.sampled_from(DTYPES),
    sparsity=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
    fmt=st.sampled_from(FORMATS),
)
def test_round_trip_is_bitwise(rows, cols, dtype, sparsity, seed, fmt):
    t = random_bits((rows, cols), dtype, sparsity, seed)
    p = pack(t, fmt[0], **fmt[1])
    assert same_bits(unpack(p), t)


@settings(max_examples=30, deadline=None)
@given(
    nm=st.sampled_from([(1, 2), (2, 4), (4, 8), (3, 8), (2, 16)]),
    groups=st.integers(1, 6),
    rows=st.integers(1, 5),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31),
)
def test_nm_round_trip_and_size(nm, groups, rows, dtype, seed):
    n, m = nm
    t = nm_bits(rows, groups * m, n, m, dtype, seed)
    p = pack(t, "nm", n=n, m=m)
    assert same_bits(unpack(p), t)
    kept = rows * groups * n
    vb = t.element_size()
    assert p.nbytes == kept * vb + math.ceil(kept * math.ceil(math.log2(m)) / 8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_are_nonzero(dtype):
    t = torch.zeros(8, dtype=dtype)
    t[1] = -0.0
    t[3] = float("nan")
    p = pack(t, "bitmap")
    assert p.parts["values"].size == 2  # -0.0 and NaN are payload, not zeros
    assert same_bits(unpack(p), t)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [0.5, 0.7, 0.9, 0.95])
def test_bitmap_size_is_the_bound(dtype, s):
    rows, cols = 64, 100
    t = random_bits((rows, cols), dtype, s, 0)
    ints = torch.int16 if t.element_size() == 2 else torch.int32
    nnz, n, vb = int((t.view(ints) != 0).sum()), t.numel(), t.element_size()
    p = pack(t, "bitmap")
    assert p.nbytes == math.ceil(n / 8) + nnz * vb
    density = nnz / n  # 1 - s
    assert p.nbytes <= 1.02 * (density * vb + 1 / 8) * n


def test_csr_size_formula_and_small_indices():
    t = random_bits((10, 200), torch.float16, 0.9, 1)
    p = pack(t, "csr")
    nnz = int(p.parts["values"].size)
    assert p.parts["indices"].dtype.itemsize == 1  # 200 columns fit uint8
    assert p.parts["indptr"].dtype.itemsize == (1 if nnz < 256 else 2)
    assert p.nbytes == 11 * p.parts["indptr"].dtype.itemsize + nnz * (1 + 2)
    wide = pack(random_bits((2, 70000), torch.float32, 0.99, 2), "csr")
    assert wide.parts["indices"].dtype.itemsize == 4  # 70000 columns need 32 bits


def test_bsr_size_formula():
    t = torch.zeros(8, 8)
    t[0, 0] = 1.0
    t[5, 7] = 2.0
    p = pack(t, "bsr", br=4, bc=4)
    assert p.parts["blocks"].size == 2 * 16
    assert p.nbytes == 3 * 1 + 2 * (1 + 16 * 4)  # indptr (R+1) x uint8, 2 blocks
    assert same_bits(unpack(p), t)


def test_two_four_fp16_is_1_125_bytes_per_element():
    t = nm_bits(64, 128, 2, 4, torch.float16, 3)
    p = pack(t, "nm", n=2, m=4)
    assert p.nbytes == 64 * 128 * 1.125
    assert pack(t, "auto").format == "nm"


def test_nm_only_along_the_input_dimension():
    t = nm_bits(8, 16, 2, 4, torch.float32, 4)  # 2:4 along dim 1 (inputs of a Linear)
    with pytest.raises(SparsecraftError, match="cannot hold"):
        pack(t.t().contiguous(), "nm", n=2, m=4)  # as a Linear weight, the groups run along outputs
    conv1d = Conv1D(nf=8, nx=16)  # GPT-2 style: weight (in, out); inputs are dim 0
    p = pack(t.t().contiguous(), "nm", module=conv1d, n=2, m=4)
    assert p.layout == "transposed" and same_bits(unpack(p), t.t().contiguous())


def test_nm_on_conv_groups_run_along_in_channels():
    conv = nn.Conv2d(8, 4, 3)
    layout = layout_for(conv, conv.weight)
    rows = nm_bits(4, 9 * 8, 2, 4, torch.float32, 5)
    w = layout.from_rows(rows).contiguous()
    p = pack(w, "auto", module=conv)
    assert (p.format, p.params, p.layout) == ("nm", {"n": 2, "m": 4}, "conv")
    assert same_bits(unpack(p), w)
    assert pack(w, "nm", n=2, m=4).layout == "conv"  # a 4-D tensor is a conv without its module
    with pytest.raises(SparsecraftError, match="cannot hold"):
        pack(w.reshape(4, -1), "nm", n=2, m=4)  # flattened (out, in*k*k): groups run along k


def test_auto_picks_dense_when_sparse_does_not_pay():
    t = random_bits((16, 16), torch.float32, 0.0, 6)
    assert pack(t, "auto").format == "dense"
    very_sparse = random_bits((16, 256), torch.float32, 0.995, 7)
    assert pack(very_sparse, "auto").format == "csr"


def test_one_dimensional_tensors_use_bitmap_or_dense():
    t = random_bits((1000,), torch.bfloat16, 0.9, 8)
    assert pack(t, "auto").format == "bitmap"
    with pytest.raises(SparsecraftError, match="no row view"):
        pack(t, "csr")


@pytest.mark.parametrize("case", [(0.0, None), (0.5, None), (0.9, None), (0.999, None), (0.5, (2, 4)), (0.5, (1, 8))])
def test_auto_sizes_equal_the_packed_bytes_and_auto_is_the_minimum(case):
    from sparsecraft.formats.base import bits_view
    from sparsecraft.formats.select import candidates, choose_format

    s, nm = case
    t = nm_bits(32, 64, *nm, torch.float16, 9) if nm else random_bits((32, 64), torch.float16, s, 9)
    x, layout = bits_view(t), layout_for(None, t)
    sizes = [pack(t, fmt).nbytes for fmt in candidates(x, layout)]
    assert [fmt.size(x, layout) for fmt in candidates(x, layout)] == sizes
    fmt, size = choose_format(x, layout)
    assert size == min(sizes) == pack(t, "auto").nbytes
