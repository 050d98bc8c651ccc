"""The two compressed-tensors tensor layouts on hand-built bytes (expected values written out by
hand from the layout description, not computed with the functions under test)."""

import pytest
import torch

from sparsecraft.errors import CheckpointError
from sparsecraft.formats.ct_codec import decode_24, decode_bitmask, encode_24, encode_bitmask, is_24

# sparse-bitmask, 2 x 10: row 0 keeps columns 1 and 9, row 1 keeps column 0.
# Row 0, byte 0: bit 1 (column 1) -> 0b00000010 = 2; byte 1: bit 1 (column 8 + 1) -> 2.
# Row 1, byte 0: bit 0 -> 1; byte 1: nothing -> 0.
DENSE_B = torch.tensor([[0, 1.5, 0, 0, 0, 0, 0, 0, 0, -2.0], [3.0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
PARTS_B = {
    "shape": torch.tensor([2, 10]),
    "compressed": torch.tensor([1.5, -2.0, 3.0]),
    "bitmask": torch.tensor([[2, 2], [1, 0]], dtype=torch.uint8),
    "row_offsets": torch.tensor([0, 2]),
}

# sparse-24-bitmask, 1 x 8: group [0, 5, 0, -1] keeps columns 1, 3; group [2, 0, 0, 0] keeps its
# nonzero (column 4) and its first zero (column 5). Bits 1, 3, 4, 5 -> 0b00111010 = 58.
DENSE_24 = torch.tensor([[0, 5.0, 0, -1.0, 2.0, 0, 0, 0]])
PARTS_24 = {
    "shape": torch.tensor([[1], [8]]),
    "compressed": torch.tensor([[5.0, -1.0, 2.0, 0.0]]),
    "bitmask": torch.tensor([[58]], dtype=torch.uint8),
}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


def test_decode_hand_built_bitmask():
    assert same_bits(decode_bitmask("w", dict(PARTS_B)), DENSE_B)


def test_encode_matches_hand_built_bitmask_bytes():
    got = encode_bitmask(DENSE_B)
    assert set(got) == set(PARTS_B)
    for k, v in PARTS_B.items():
        assert torch.equal(got[k], v) and got[k].dtype == v.dtype, k


def test_decode_hand_built_24():
    assert same_bits(decode_24("w", dict(PARTS_24)), DENSE_24)


def test_encode_matches_hand_built_24_bytes():
    got = encode_24(DENSE_24)
    for k, v in PARTS_24.items():
        assert torch.equal(got[k], v) and got[k].dtype == v.dtype, k


def test_negative_zero_is_written_as_positive_zero():
    w = torch.tensor([[-0.0, 1.0, 0.0, -0.0, 0.0, 0.0, 2.0, -0.0]])
    for enc, dec in ((encode_bitmask, decode_bitmask), (encode_24, decode_24)):
        back = dec("w", enc(w))
        assert torch.equal(back, w)  # equal as numbers
        assert not torch.signbit(back[back == 0]).any()  # and every zero is +0.0
        assert torch.equal(dec("w", enc(back)).view(torch.int32), back.view(torch.int32))  # then bit-exact


def test_first_release_1d_tensor():
    parts = {"shape": torch.tensor([3]), "compressed": torch.tensor([7.0]),
             "bitmask": torch.tensor([4], dtype=torch.uint8), "row_offsets": torch.tensor(0)}
    assert torch.equal(decode_bitmask("b", parts), torch.tensor([0.0, 0.0, 7.0]))


@pytest.mark.parametrize("change, message", [
    ({"compressed": torch.tensor([1.5, -2.0])}, "marks 3 values"),
    ({"row_offsets": torch.tensor([0, 1])}, "row_offsets"),
    ({"bitmask": torch.tensor([[2, 6], [1, 0]], dtype=torch.uint8)}, "beyond column 10"),
    ({"bitmask": torch.tensor([[2, 2, 0], [1, 0, 0]], dtype=torch.uint8)}, r"needs uint8 \[2, 2\]"),
    ({"shape": torch.tensor([2, 10, 1])}, "dense shape"),
    ({"shape": torch.tensor([2.0, 10.0])}, "expected integers"),
    ({"shape": torch.tensor([2**31, 2**31])}, "needs uint8"),  # a huge declared shape: refused before allocating
])
def test_bitmask_damage_is_an_error(change, message):
    with pytest.raises(CheckpointError, match=message):
        decode_bitmask("w", {**PARTS_B, **change})


@pytest.mark.parametrize("change, message", [
    ({"bitmask": torch.tensor([[59]], dtype=torch.uint8)}, "marks 3 of the 4"),
    ({"compressed": torch.tensor([[5.0, -1.0, 2.0]])}, "needs float"),
    ({"shape": torch.tensor([[1], [6]])}, "cannot be 2:4"),
    ({"shape": torch.tensor([8])}, "dense shape"),
])
def test_24_damage_is_an_error(change, message):
    with pytest.raises(CheckpointError, match=message):
        decode_24("w", {**PARTS_24, **change})


def test_encode_24_refuses_a_weight_that_is_not_24():
    w = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    assert not is_24(w) and is_24(DENSE_24)
    with pytest.raises(CheckpointError, match="not 2:4"):
        encode_24(w, "layer.weight")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_random_round_trip_keeps_bits(dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 16, generator=g).to(dtype)
    w[torch.rand(6, 16, generator=g) < 0.6] = 0
    assert same_bits(decode_bitmask("w", encode_bitmask(w)).float(), w.float())
    groups = w.reshape(6, 4, 4).clone()
    groups[..., 2:] = 0  # at most 2 nonzeros per group of 4
    w24 = groups.reshape(6, 16)
    assert same_bits(decode_24("w", encode_24(w24)).float(), w24.float())
