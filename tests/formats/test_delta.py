"""Lossless sparse deltas: bit-exact apply (special values), size bound, buckets, errors."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecraft.formats.base import bits_view
from sparsecraft.formats.delta import DeltaError, DeltaWarning, apply_delta, encode_delta
from sparsecraft.formats.delta_wire import pack_bucket
from sparsecraft.formats.varint import encode_varint, to_gaps
from tests.formats.helpers import DTYPES, random_bits, same_bits


def clone(state):
    return {k: v.clone() for k, v in state.items()}


@settings(max_examples=25, deadline=None)
@given(dtype=st.sampled_from(DTYPES), frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**31),
       bucket=st.sampled_from([64, 1000, 1 << 20]))
def test_apply_is_bit_exact(dtype, frac, seed, bucket):
    old = {"w": random_bits((7, 33), dtype, 0.3, seed), "b": random_bits((5,), dtype, 0.0, seed + 1)}
    new = clone(old)
    g = torch.Generator().manual_seed(seed)
    for t in new.values():
        flip = torch.rand(t.shape, generator=g) < frac
        t[flip] = random_bits(t.shape, dtype, 0.0, seed + 2)[flip]
    payload = encode_delta(old, new, bucket_bytes=bucket)
    got = apply_delta(clone(old), payload)
    assert all(same_bits(got[k], new[k]) for k in new)
    assert all(len(b) <= bucket + 4096 for b in payload.buckets)


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_count_as_changes(dtype):
    old = {"t": torch.zeros(6, dtype=dtype)}
    new = {"t": torch.tensor([-0.0, float("nan"), 0.0, 0.0, 0.0, 0.0], dtype=dtype)}
    new["t"][2:3].view(torch.int16 if dtype != torch.float32 else torch.int32).fill_(1)  # subnormal
    payload = encode_delta(old, new)
    assert payload.stats["changed"] == 3
    assert same_bits(apply_delta(clone(old), payload)["t"], new["t"])
    nothing = encode_delta(new, clone(new))  # NaN == NaN bitwise: nothing to send but the manifest
    assert nothing.stats["changed"] == 0 and nothing.stats["value_bytes"] == nothing.stats["index_bytes"] == 0
    assert len(nothing.buckets) == 1 and nothing.touched == []


def test_one_percent_changed_meets_the_size_bound():
    n = 200_000
    old = {"w": torch.randn(n).to(torch.bfloat16)}
    new = clone(old)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: n // 100]
    new["w"][idx] = new["w"][idx] + 1.0
    p = encode_delta(old, new)
    changed = p.stats["changed"]
    assert changed == (new["w"].view(torch.int16) != old["w"].view(torch.int16)).sum()
    assert p.nbytes <= changed * (2 + 2) + p.stats["header_bytes"]
    assert p.stats["header_bytes"] < 400  # record, versions, bucket count, a one-tensor manifest


def test_dense_fallback_when_most_changed():
    old = {"w": torch.randn(1000)}
    new = {"w": old["w"] + 1}
    p = encode_delta(old, new)
    assert p.stats["dense_tensors"] == ["w"] and p.stats["value_bytes"] == 4000
    assert p.stats["index_bytes"] == 0
    assert same_bits(apply_delta(clone(old), p)["w"], new["w"])


def test_buckets_are_size_bounded_and_split_tensors():
    old = {"w": torch.randn(10_000)}
    new = {"w": old["w"] + 1}
    p = encode_delta(old, new, bucket_bytes=4096)
    assert len(p.buckets) == 10 and all(len(b) <= 4096 + 300 for b in p.buckets)
    assert same_bits(apply_delta(clone(old), p)["w"], new["w"])


def test_corrupted_bucket_and_mismatched_state_are_errors():
    old = {"w": torch.randn(100)}
    new = clone(old)
    new["w"][3] = 7.0
    p = encode_delta(old, new)
    bad = bytearray(p.buckets[0])
    bad[-1] ^= 1
    with pytest.raises(DeltaError, match="CRC32"):
        apply_delta(clone(old), [bytes(bad)])
    with pytest.raises(DeltaError, match="'w'"):
        apply_delta({"w": torch.randn(101)}, p)
    with pytest.raises(DeltaError, match="differ in their tensors"):
        encode_delta(old, {"v": new["w"]})


def test_tied_tensors_are_sent_once_and_copied_for_untied_receivers():
    emb = torch.randn(50, 8)
    old = {"emb": emb, "head": emb}
    new_emb = emb.clone()
    new_emb[3, 2] = 9.0
    new = {"emb": new_emb, "head": new_emb}
    p = encode_delta(old, new)
    assert p.stats["tied"] == 1 and p.stats["changed"] == 1 and p.stats["numel"] == 400
    untied = {"emb": emb.clone(), "head": emb.clone()}
    apply_delta(untied, p)
    assert same_bits(untied["emb"], new_emb) and same_bits(untied["head"], new_emb)
    tied_emb = emb.clone()
    tied = apply_delta({"emb": tied_emb, "head": tied_emb}, p)
    assert same_bits(tied["head"], new_emb)


def test_a_tied_copy_that_drifted_is_resent_even_when_its_source_did_not_change():
    emb = torch.randn(20)
    old = {"emb": emb.clone(), "head": emb.clone()}
    old["head"][0] = 5.0  # the sender's old copies differ, its new ones are tied again
    new = {"emb": emb, "head": emb}
    p = encode_delta(old, new)
    got = apply_delta(clone(old), p)
    assert same_bits(got["head"], emb) and same_bits(got["emb"], emb)


def test_fully_changed_tensor_counts_every_change_without_collecting_indices():
    old = {"w": torch.randn(3 << 20, generator=torch.Generator().manual_seed(0))}
    new = {"w": old["w"] + 1}  # x + 1 != x for every |x| < 2**24
    p = encode_delta(old, new)
    assert p.stats["changed"] == 3 << 20 and p.stats["dense_tensors"] == ["w"]


def test_pfor8_indices_and_unaligned_values_at_one_percent():
    g = torch.Generator().manual_seed(1)
    old = {"a": torch.randn(3), "w": torch.randn(100_001, generator=g).to(torch.bfloat16)}
    new = clone(old)
    hit = torch.rand(100_001, generator=g) < 0.01
    new["w"][hit] = -new["w"][hit]
    new["a"][1] = 2.0
    p = encode_delta(old, new)
    assert b'"c":"pfor8"' in p.buckets[0]
    assert same_bits(apply_delta(clone(old), p)["w"], new["w"])
    assert p.stats["index_bytes"] < 1.25 * p.stats["changed"]


def v1_sparse_bucket(state, idx, coding, ib):
    """A format-1 bucket (the first release: MAGIC SCD1, the header is the list of records)."""
    t = state["w"]
    values = bits_view(t).reshape(-1)[idx].view(np.uint8)
    rec = {"k": "w", "dt": "float32", "sh": list(t.shape), "m": "s", "lo": 0, "n": int(idx.size), "c": coding,
           "ib": int(ib.size), "vb": int(values.size)}
    return pack_bucket([rec], [ib, values], fmt=1)


def test_varint_payloads_of_the_first_release_still_apply_and_unknown_codings_fail():
    old = {"w": torch.randn(1000)}
    new = clone(old)
    idx = np.array([3, 200, 999])
    new["w"][idx] = 5.0
    bucket = v1_sparse_bucket(new, idx, "varint", encode_varint(to_gaps(idx)))
    with pytest.warns(DeltaWarning, match="without checking"):
        assert same_bits(apply_delta(clone(old), [bucket])["w"], new["w"])
    with pytest.raises(DeltaError, match="unknown index coding 'zz'"):
        apply_delta(clone(old), [v1_sparse_bucket(new, idx, "zz", encode_varint(to_gaps(idx)))])


def test_truncated_bucket_is_an_error():
    old = {"w": torch.randn(100)}
    new = {"w": old["w"] * 2}
    p = encode_delta(old, new)
    with pytest.raises(DeltaError, match="CRC32"):
        apply_delta(clone(old), [p.buckets[0][:-10]])
    with pytest.raises(DeltaError, match="truncated"):
        apply_delta(clone(old), [p.buckets[0][:5]])


@settings(max_examples=10, deadline=None)
@given(dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31), bucket=st.sampled_from([300, 4096, 1 << 20]))
def test_sparse_changes_over_many_records_are_bit_exact(dtype, seed, bucket):
    old = {"w": random_bits((20_011,), dtype, 0.1, seed)}
    new = clone(old)
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(20_011, generator=g) < 0.01
    new["w"][flip] = random_bits((20_011,), dtype, 0.0, seed + 1)[flip]
    p = encode_delta(old, new, bucket_bytes=bucket)
    assert same_bits(apply_delta(clone(old), p)["w"], new["w"])
    assert p.nbytes <= p.stats["changed"] * (new["w"].element_size() + 2) + p.stats["header_bytes"]


def test_versions_and_known_base_digests_are_explicit_arguments():
    from sparsecraft.formats.digest import tensor_digest

    g = torch.Generator().manual_seed(5)
    old = {"w": torch.randn(500, generator=g), "h": torch.randn(40, generator=g).to(torch.bfloat16)}
    mid, new = clone(old), clone(old)
    mid["w"][7] = 1.0
    new["w"][7], new["h"][3] = 1.0, 2.0
    p1 = encode_delta(old, mid, from_version=4)
    assert (p1.from_version, p1.to_version, p1.stats["to_version"]) == (4, 5, 5)
    assert p1.result_digests == {k: tensor_digest(v) for k, v in mid.items()}  # computed from the changes alone
    p2 = encode_delta(mid, new, from_version=5, base_digests=p1.result_digests)
    assert p2.buckets == encode_delta(mid, new, from_version=5).buckets  # same bytes, one pass over mid fewer
    with pytest.raises(DeltaError, match="not version 5"):  # wrong known digests: every receiver refuses
        apply_delta(clone(mid), encode_delta(mid, new, from_version=5, base_digests={"w": 1}))
    bad_args = [{"from_version": -1}, {"from_version": 2, "to_version": 2}, {"from_version": True},
                {"to_version": 1.5}, {"base_digests": {"w": "x"}}, {"bucket_bytes": 10}]
    for bad in bad_args:
        with pytest.raises(DeltaError, match="must be"):
            encode_delta(old, mid, **bad)
    with pytest.raises(DeltaError, match="version must be an integer"):
        apply_delta(clone(old), p1, version="4")


def test_a_tied_tensor_whose_old_copy_has_another_shape_is_an_error():
    emb = torch.randn(20)
    with pytest.raises(DeltaError, match="tensor 'head': old is torch.float32\\(21,\\), new is torch.float32\\(20,\\)"):
        encode_delta({"emb": emb.clone(), "head": torch.randn(21)}, {"emb": emb, "head": emb})
