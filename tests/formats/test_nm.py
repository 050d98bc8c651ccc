"""N:M helpers: occupancy codes (word arithmetic) and kept positions, checked exhaustively."""

import numpy as np
import pytest

from sparsecraft.formats.nm import _flat_positions, group_codes, group_positions


@pytest.mark.parametrize("m", [2, 4, 8, 16])
def test_group_codes_match_bit_sums_for_every_pattern(m):
    codes = np.arange(1 << m)
    nz = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)
    assert group_codes(nz).tolist() == codes.tolist()


def test_group_codes_none_for_other_m():
    assert group_codes(np.zeros((3, 3), dtype=bool)) is None


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (3, 8), (4, 8), (5, 8), (2, 16), (9, 16)])
def test_group_positions_are_set_bits_then_padding(n, m):
    rng = np.random.default_rng(n * m)
    nz = np.zeros((200, m), dtype=bool)
    for row in nz:
        row[rng.choice(m, rng.integers(0, n + 1), replace=False)] = True
    got = group_positions(nz, n)
    want = np.argsort(~nz, axis=1, kind="stable")[:, :n]
    assert got.shape == (200, n) and got.tolist() == want.tolist()


def test_flat_positions_hand_checked():
    assert _flat_positions(np.array([[0, 3], [1, 2]], dtype=np.uint8), 4).tolist() == [0, 3, 5, 6]
