"""Deltas never write wrong weights: a wrong base, a second apply, a truncated, corrupted or
incomplete payload and a version gap are refused with the tensor and the reason named, and
the receiving state stays bit-identical to before (issue 10, section 2)."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sparsecraft.formats.delta import DeltaError, apply_delta, encode_delta, encode_full
from tests.formats.helpers import same_bits


def version(v: int) -> dict[str, torch.Tensor]:
    """Version ``v`` of a small model: v0 random, then each version changes ~2% of ``w``,
    one element of ``b`` and (v2 only) every element of ``h``."""
    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(64, 40, generator=g), "b": torch.randn(40, generator=g),
             "h": torch.randn(300, generator=g).to(torch.bfloat16)}
    for s in range(1, v + 1):
        g = torch.Generator().manual_seed(s)
        hit = torch.rand(state["w"].shape, generator=g) < 0.02
        state["w"] = torch.where(hit, state["w"] * 1.5 + 0.25, state["w"])
        state["b"] = state["b"].clone()
        state["b"][s] += 1.0
        state["h"] = state["h"] * 2 if s == 2 else state["h"]
    return state


def clone(state):
    return {k: v.clone() for k, v in state.items()}


def unchanged(before, after):
    return all(same_bits(before[k], after[k]) for k in before)


def refused(state, payload, match, **kw):
    """Apply must raise DeltaError matching ``match`` (one line) and write nothing."""
    before = clone(state)
    with pytest.raises(DeltaError, match=match) as err:
        apply_delta(state, payload, **kw)
    assert "\n" not in str(err.value)
    assert unchanged(before, state), "a refused delta wrote into the state"
    return str(err.value)


def multi_bucket_delta():
    """1 -> 2 in 7+ buckets of <= 128 body bytes (h goes dense, w sparse)."""
    p = encode_delta(version(1), version(2), bucket_bytes=128, from_version=1, to_version=2)
    assert len(p.buckets) >= 7
    return p


def test_chained_deltas_reach_every_version_bit_identically():
    state = clone(version(0))
    for v in (1, 2, 3):
        p = encode_delta(version(v - 1), version(v), bucket_bytes=2048, from_version=v - 1)
        assert (p.from_version, p.to_version) == (v - 1, v)
        apply_delta(state, p, version=v - 1)
        assert unchanged(version(v), state)


def test_a_delta_applied_to_the_wrong_base_is_refused():
    p = encode_delta(version(1), version(2), from_version=1, to_version=2)
    msg = refused(clone(version(0)), p, r"not version 1, the base of this 1 -> 2 delta")
    assert msg.startswith("tensor 'w'") and "nothing was written" in msg
    refused({k: torch.zeros_like(v) for k, v in version(1).items()}, p, "base digest")  # all-zero base


def test_a_delta_applied_twice_is_refused():
    state = clone(version(1))
    p = encode_delta(version(1), version(2), from_version=1, to_version=2)
    apply_delta(state, p)
    assert unchanged(version(2), state)
    refused(state, p, "already applied|base digest")
    refused(state, p, "this delta was already applied", version=2)


def test_a_receiver_differing_only_in_a_zero_sign_or_a_nan_payload_is_refused():
    old, new = version(1), version(2)
    old["b"][30], old["b"][31] = 0.0, float("nan")
    new["b"][30], new["b"][31] = 0.0, float("nan")
    p = encode_delta(old, new)
    for pos, bits in ((30, -(2**31)), (31, 0x7FC00001)):  # -0.0 (sign bit only) instead of +0.0; another NaN
        state = clone(old)
        state["b"][pos : pos + 1].view(torch.int32).fill_(bits)
        refused(state, p, "tensor 'b': the receiving state is not version 0")
    assert unchanged(new, apply_delta(clone(old), p))


def test_a_truncated_payload_is_refused():
    p = multi_bucket_delta()
    last = len(p.buckets) - 1
    cut = p.buckets[:-1] + [p.buckets[-1][:-10]]
    msg = refused(clone(version(1)), cut, f"delta bucket {last} is corrupted or truncated")
    assert "CRC32" in msg
    refused(clone(version(1)), p.buckets[:-1] + [p.buckets[-1][:40]], f"delta bucket {last} is truncated: header of")
    refused(clone(version(1)), [p.buckets[0][:9]], "delta bucket 0 is truncated")


@pytest.mark.parametrize("k", [2, 3, 5])
def test_a_corrupted_bucket_after_good_ones_writes_nothing(k):
    p = multi_bucket_delta()
    bad = bytearray(p.buckets[k])
    bad[len(bad) // 2] ^= 0x10
    buckets = p.buckets[:k] + [bytes(bad)] + p.buckets[k + 1 :]
    refused(clone(version(1)), buckets, f"delta bucket {k} is corrupted")


def test_a_dropped_last_bucket_is_refused():
    p = multi_bucket_delta()
    n = len(p.buckets)
    refused(clone(version(1)), p.buckets[:-1], f"truncated: {n - 1} of {n} buckets present")
    refused(clone(version(1)), p.buckets[:2] + p.buckets[3:], "bucket 2: carries bucket number 3")


def test_buckets_of_another_payload_are_refused():
    a = multi_bucket_delta()
    b = encode_delta(version(1), version(3), bucket_bytes=128, from_version=1, to_version=2)
    mixed = a.buckets[:1] + b.buckets[1:2] + a.buckets[2:]
    refused(clone(version(1)), mixed, "belongs to another payload")


def test_a_version_gap_is_refused_and_named():
    p23 = encode_delta(version(2), version(3), from_version=2, to_version=3)
    msg = refused(clone(version(1)), p23, "goes from version 2 to 3, the receiving state is at version 1", version=1)
    assert "1 update(s) missed" in msg
    refused(clone(version(1)), p23, r"tensor '\w+': the receiving state is not version 2")  # no version given


def test_a_full_resend_heals_any_receiver():
    full = encode_full(version(3), to_version=3)
    assert full.from_version is None
    for state in (clone(version(0)), {k: torch.zeros_like(v) for k, v in version(0).items()}):
        apply_delta(state, full, version=1)  # a full resend ignores the receiver's version and base
        assert unchanged(version(3), state)


def test_a_record_decoding_to_other_positions_fails_the_result_digest():
    """The result digest is predicted from the staged changes: a CRC-valid payload whose
    positions were shifted (re-packed with a fresh CRC) is refused before writing."""
    from sparsecraft.formats.delta_wire import pack_bucket, parse_bucket

    p = encode_delta(version(0), version(1), from_version=0)
    b = parse_bucket(p.buckets[0], 0)
    rec = next(r for r in b.header["r"] if r["k"] == "w" and r["m"] == "s")
    rec["lo"] += 1  # every position one further on, still inside the tensor
    refused(clone(version(0)), [pack_bucket(b.header, [b.body])], "tensor 'w': the staged changes give result digest")


def test_receiver_tied_tensors_that_the_delta_unties_are_refused():
    w = torch.randn(30)
    old = {"emb": w.clone(), "head": w.clone()}
    new = clone(old)
    new["emb"][4] = 2.0  # the sender's copies are separate and now differ
    p = encode_delta(old, new)
    shared = w.clone()
    refused({"emb": shared, "head": shared}, p, "one tensor \\(tied\\) in the receiving state")


@settings(max_examples=20, deadline=None)
@given(start=st.integers(0, 3), target=st.integers(0, 3), step=st.integers(1, 3))
@example(start=2, target=1, step=1)  # applied twice
def test_only_the_right_base_accepts_a_delta(start, target, step):
    """Property: a delta from ``target`` to ``target + step`` applies to version ``target``
    and to no other version, and a refused apply writes nothing."""
    p = encode_delta(version(target), version(target + step), bucket_bytes=4096, from_version=target,
                     to_version=target + step)
    state = clone(version(start))
    if start == target:
        assert unchanged(version(target + step), apply_delta(state, p))
    else:
        refused(state, p, "the receiving state is not version")
