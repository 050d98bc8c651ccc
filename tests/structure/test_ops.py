"""Reshape grouping and the labels that shape ops carry (unit rules of the tracer)."""

from __future__ import annotations

from sparsecraft.structure.labels import Ch, Heads, SiteHeads, SiteOut, SiteWithin, Spaces, Within
from sparsecraft.structure.ops import cat_label, reshape, reshape_groups, slice_label


class Spoiler:
    def __init__(self) -> None:
        self.spoiled: list = []

    def spoil(self, lab, reason) -> None:
        self.spoiled.append((lab, reason))


def test_reshape_groups_pairs_runs_of_equal_product():
    assert reshape_groups([2, 5, 32], [2, 5, 4, 8]) == [([0], [0]), ([1], [1]), ([2], [2, 3])]
    assert reshape_groups([2, 5, 1, 8], [2, 5, 8]) == [([0], [0]), ([1], [1]), ([2, 3], [2])]
    assert reshape_groups([6, 4], [4, 6]) == [([0, 1], [0, 1])]
    assert reshape_groups([3], [4]) is None


def test_split_into_heads_and_merge_back():
    tr = Spoiler()
    ch = Ch(0, 0, 32)
    labs = reshape(tr, (None, None, ch), (2, 5, 32), (2, 5, 4, 8), "view")
    assert labs == [None, None, Heads(0, 0, 8), Within(0, 0, 8)]
    assert reshape(tr, tuple(labs), (2, 5, 4, 8), (2, 5, 32), "view") == [None, None, ch]
    one = reshape(tr, (None, None, Ch(1, 0, 8)), (2, 5, 8), (2, 5, 1, 8), "view")  # a single key/value head
    assert one == [None, None, Heads(1, 0, 8), Within(1, 0, 8)]
    assert reshape(tr, (None, None, SiteHeads(3), SiteWithin(3)), (2, 5, 4, 8), (2, 5, 32), "view")[2] == SiteOut(3)
    assert not tr.spoiled


def test_repeat_kv_and_channel_major_flatten():
    tr = Spoiler()
    kv = Heads(2, 0, 8)  # (batch, 2 kv heads, expanded group of 3, tokens, 8) -> (batch, 6 heads, tokens, 8)
    labs = reshape(tr, (None, kv, None, None, Within(2, 0, 8)), (1, 2, 3, 5, 8), (1, 6, 5, 8), "reshape")
    assert labs == [None, Heads(2, 0, 8, repeat=3), None, Within(2, 0, 8)]
    flat = reshape(tr, (None, Ch(4, 0, 12), None, None), (2, 12, 2, 2), (2, 48), "view")
    assert flat == [None, Ch(4, 0, 12, spread=4)]
    assert not tr.spoiled


def test_mixing_batch_and_channels_spoils():
    tr = Spoiler()
    out = reshape(tr, (None, Ch(0, 0, 8)), (3, 8), (24,), "view")
    assert out == [None] and tr.spoiled and "reshaped by view" in tr.spoiled[0][1]


def test_slices_and_cats():
    tr = Spoiler()
    half = slice_label(tr, Within(0, 0, 8), 4, 8, 1, 8, "slice")
    assert half == Within(0, 0, 8, whole=False)
    assert cat_label(tr, [half, Within(0, 0, 8, whole=False)], [4, 4], "cat") == Within(0, 0, 8)  # rotate_half
    thirds = [slice_label(tr, Ch(1, 0, 96), a, a + 32, 1, 96, "split") for a in (0, 32, 64)]
    assert thirds == [Ch(1, 0, 32), Ch(1, 32, 32), Ch(1, 64, 32)]
    assert cat_label(tr, thirds, [32, 32, 32], "cat") == Ch(1, 0, 96)
    assert not tr.spoiled
    assert cat_label(tr, [thirds[1], thirds[0]], [32, 32], "cat") is None and len(tr.spoiled) == 2


def test_union_find_merges_slots_and_keeps_freeze_reasons():
    sp = Spaces()
    a, b, c = sp.new(4), sp.new(4), sp.new(5)
    sp.freeze(b, "normalised")
    root = sp.union(a, b)
    assert sp.find(a) == sp.find(b) == root and sp.reason(a) == "normalised"
    sp.union(a, c)  # different sizes: both frozen, not merged
    assert sp.find(c) == c and sp.reason(c) == "4 channels meet 5 channels of another tensor"
    assert sp.reason(a) == "normalised"  # the first reason stays
