"""Hostile delta payloads: CRC-valid buckets with malformed headers or records give one
one-line DeltaError naming the bucket/record/tensor and the reason, never a traceback of
another type, never an allocation sized by a lie, and never a write (issue 10)."""

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecraft.formats.delta import DeltaError, DeltaWarning, apply_delta, encode_delta
from sparsecraft.formats.delta_wire import pack_bucket, parse_bucket
from tests.formats.helpers import same_bits

# the first release's encoder on states() below (``git show c208a3d:src/sparsecraft/formats/delta.py``):
# a sparse u8-coded record for w (-0.0, a NaN, a subnormal), a dense one for h, an alias for head
FIRST_RELEASE_BUCKET = bytes.fromhex(
    "53434431e600000048025d105b7b226b223a2277222c226474223a22666c6f61743332222c227368223a5b34305d2c226d223a2273222c"
    "226c6f223a302c226e223a332c2263223a227538222c226962223a332c227662223a31327d2c7b226b223a2268222c226474223a22626"
    "66c6f61743136222c227368223a5b31325d2c226d223a2264222c226c6f223a302c226e223a31322c226962223a302c227662223a3234"
    "7d2c7b226b223a2268656164222c226d223a2261222c22737263223a2277222c226474223a22666c6f61743332222c227368223a5b3430"
    "5d2c226e223a302c226962223a302c227662223a307d5d030d15000000800000c07fc216010020c100c1c0c080c000c000000040804"
    "0c040004120414041")


def first_release_states():
    old = {"w": torch.arange(40, dtype=torch.float32) / 7, "h": (torch.arange(12, dtype=torch.float32) - 5).to(
        torch.bfloat16)}
    new = {"w": old["w"].clone(), "h": old["h"] * 2}
    new["w"][[3, 17, 39]] = torch.tensor([-0.0, float("nan"), 1e-40])
    return old, new


def test_payloads_of_the_first_release_apply_with_a_warning_naming_the_missing_check():
    old, new = first_release_states()
    untied = {"w": old["w"].clone(), "h": old["h"].clone(), "head": old["w"].clone()}
    with pytest.warns(DeltaWarning, match="without checking that the receiving state is its base"):
        apply_delta(untied, [FIRST_RELEASE_BUCKET])
    assert all(same_bits(untied[k], new["w" if k == "head" else k]) for k in untied)
    with pytest.raises(DeltaError, match="carries no version numbers"):
        apply_delta({k: v.clone() for k, v in old.items()}, [FIRST_RELEASE_BUCKET], version=0)
    with pytest.raises(DeltaError, match="mixes format-1 and format-2 buckets"):
        apply_delta(untied, [FIRST_RELEASE_BUCKET, encode_delta(new, new).buckets[0]])


def states():
    g = torch.Generator().manual_seed(3)
    old = {"w": torch.randn(64, 40, generator=g), "h": torch.randn(30, generator=g).to(torch.bfloat16)}
    new = {k: v.clone() for k, v in old.items()}
    new["w"].view(-1)[[5, 77, 900, 2000]] += 1.0
    new["h"] = new["h"] * 2
    return old, new


def good_bucket():
    old, new = states()
    p = encode_delta(old, new)
    assert len(p.buckets) == 1
    b = parse_bucket(p.buckets[0], 0)
    assert b.header["r"][0]["k"] == "w" and b.header["r"][0]["m"] == "s" and b.header["r"][0]["c"] == "varint"
    return old, b


def raw_bucket(magic: bytes, header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<4sII", magic, len(header), zlib.crc32(body, zlib.crc32(header))) + header + body


def refused(state, buckets, match):
    before = {k: v.clone() for k, v in state.items()}
    with pytest.raises(DeltaError, match=match) as err:
        apply_delta(state, buckets)
    assert "\n" not in str(err.value)
    assert all(same_bits(before[k], state[k]) for k in state)


RECORD_CASES = {  # a change to the sparse record of "w" (record 0) -> the reason the error gives
    "not an object": (lambda r: ["w"], "a record must be an object, got list"),
    "name missing": (lambda r: {**r, "k": None}, "field 'k' \\(tensor name\\) must be a string, got None"),
    "count is a string": (lambda r: {**r, "n": "4"}, "tensor 'w'\\): field 'n' must be an integer >= 0, got '4'"),
    "count is a bool": (lambda r: {**r, "n": True}, "field 'n' must be an integer >= 0, got True"),
    "count is NaN": (lambda r: {**r, "n": float("nan")}, "field 'n' must be an integer >= 0, got nan"),
    "count missing": (lambda r: {k: v for k, v in r.items() if k != "n"}, "field 'n' must be an integer"),
    "negative base": (lambda r: {**r, "lo": -1}, "field 'lo' must be an integer >= 0, got -1"),
    "value bytes lie": (lambda r: {**r, "vb": 20}, "4 values of float32 need 16 bytes, the record declares 20"),
    "index bytes lie": (lambda r: {**r, "ib": 3}, "4 varint indices need 4 to 84 bytes, the record declares 3"),
    "huge count": (lambda r: {**r, "n": 10**12, "vb": 4 * 10**12}, "10{12} changes from position 0 do not fit 2560"),
    "count beyond index bytes": (lambda r: {**r, "n": 2000, "vb": 8000},
                                 "2000 varint indices need 2000 to 42000 bytes, the record declares 6"),
    "unknown mode": (lambda r: {**r, "m": "x"}, "unknown record mode 'x'"),
    "unknown dtype": (lambda r: {**r, "dt": "float8"}, "unknown dtype 'float8'"),
    "dtype is a list": (lambda r: {**r, "dt": ["float32"]}, "unknown dtype \\['float32'\\]"),
    "shape not a list": (lambda r: {**r, "sh": "64x40"}, "shape must be a list of integers >= 0, got '64x40'"),
    "negative dim": (lambda r: {**r, "sh": [-64, -40]}, "shape must be a list of integers >= 0"),
    "other shape": (lambda r: {**r, "sh": [2560]}, "is for float32\\[2560\\]"),
    "unknown coding": (lambda r: {**r, "c": "zz"}, "unknown index coding 'zz'"),
    "past the end": (lambda r: {**r, "lo": 2557}, "4 changes from position 2557 do not fit 2560 elements"),
    "positions past the end": (lambda r: {**r, "lo": 1000}, "position \\d+ is past the tensor's 2560 elements"),
    "alias with bytes": (lambda r: {**r, "m": "a", "src": "h"},
                         "an alias record needs a string 'src' and n = ib = vb = 0"),
    "dense past the end": (lambda r: {**r, "m": "d", "ib": 0, "vb": 24, "n": 6, "lo": 2555},
                           "dense elements \\[2555, 2561\\) \\(index bytes 0\\) do not fit 2560 elements"),
}


@pytest.mark.parametrize("fmt", [1, 2])
@pytest.mark.parametrize("case", sorted(RECORD_CASES))
def test_malformed_records_are_one_line_errors_naming_the_record(case, fmt):
    old, b = good_bucket()
    change, reason = RECORD_CASES[case]
    header = json.loads(json.dumps(b.header))
    header["r"][0] = change(header["r"][0])
    raw = pack_bucket(header if fmt == 2 else header["r"], [b.body], fmt=fmt)
    refused(old, [raw], f"delta bucket 0, record 0.*{reason}")


def test_huge_gaps_cannot_wrap_positions_around():
    old, b = good_bucket()
    header = json.loads(json.dumps(b.header))
    rec = header["r"][0]
    gaps = np.array([2**64 - 1, 2**63, 5, 7], dtype=np.uint64)  # as int64: -1, -2**63, ...
    body = np.concatenate([gaps.view(np.uint8), b.body[rec["ib"] :]])
    header["r"][0] = {**rec, "c": "u64", "ib": 32}
    refused(old, [pack_bucket(header, [body])], "record 0 \\(tensor 'w'\\): index gaps run past the tensor")


HEADER_CASES = {  # a change to the format-2 header of bucket 0 -> the reason the error gives
    "not an object": (lambda h: [h], 'a format-2 header must be an object with "f": 2'),
    "records not a list": (lambda h: {**h, "r": {}}, "the records must be a list, got dict"),
    "body length lies": (lambda h: {**h, "r": [{**h["r"][0], "ib": 9}] + h["r"][1:]},
                         "delta bucket 0: the records declare 85 bytes, the body has 82"),
    "from is a string": (lambda h: {**h, "from": "0"}, "field 'from' must be an integer >= 0 or null, got '0'"),
    "backwards": (lambda h: {**h, "from": 3, "to": 2}, "version 3 -> 2 does not move forward"),
    "bucket count lies": (lambda h: {**h, "of": 2}, "truncated: 1 of 2 buckets present"),
    "bucket number": (lambda h: {**h, "i": 4}, "carries bucket number 4"),
    "manifest missing": (lambda h: {k: v for k, v in h.items() if k != "man"}, "the manifest must be a list"),
    "manifest entry": (lambda h: {**h, "man": [["w", "float32"]] + h["man"][1:]},
                       "manifest entry 0: must be \\[name, dtype, shape, base digest, result digest\\]"),
    "manifest dtype is a list": (lambda h: {**h, "man": [[h["man"][0][0], ["x"], *h["man"][0][2:]]] + h["man"][1:]},
                                 "manifest entry 0 \\(tensor 'w'\\): unknown dtype \\['x'\\]"),
    "bad digest": (lambda h: {**h, "man": [[*h["man"][0][:4], "zz"]] + h["man"][1:]},
                   "manifest entry 0 \\(tensor 'w'\\): result digest must be 16 lowercase hex digits, got 'zz'"),
    "manifest edited": (lambda h: {**h, "man": [[*h["man"][0][:4], "0" * 16]] + h["man"][1:]},
                        "the manifest does not match its CRC"),
    "unlisted tensor": (lambda h: {**h, "r": [{**h["r"][0], "k": "v"}] + h["r"][1:]},
                        "record 0 \\(tensor 'v'\\): the tensor is not in the payload's manifest"),
    "alias outside": (lambda h: {**h, "r": h["r"] + [{"k": "h", "m": "a", "src": "q", "dt": "bfloat16", "sh": [30],
                                                        "n": 0, "ib": 0, "vb": 0}]},
                      "alias record for a tensor that has other records"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_malformed_headers_are_one_line_errors(case):
    old, b = good_bucket()
    change, reason = HEADER_CASES[case]
    refused(old, [pack_bucket(change(json.loads(json.dumps(b.header))), [b.body])], reason)


@pytest.mark.parametrize("magic, header, reason", [
    (b"SCD2", b"{not json", "delta bucket 0: header is not valid JSON \\(JSONDecodeError\\)"),
    (b"SCD2", b"\xff\xfe", "header is not valid JSON"),
    (b"SCD2", b"[" * 100_000 + b"]" * 100_000, "header is not valid JSON \\(RecursionError\\)"),
    (b"SCD1", b'{"k": "w"}', "the records must be a list, got dict"),
    (b"XXXX", b"[]", "not a sparsecraft delta bucket"),
])
def test_undecodable_headers_are_one_line_errors(magic, header, reason):
    old, _ = good_bucket()
    refused(old, [raw_bucket(magic, header)], reason)


def test_a_lying_header_length_is_refused_before_reading():
    old, _ = good_bucket()
    raw = struct.pack("<4sII", b"SCD2", 10**9, 0) + b"{}"
    refused(old, [raw], "delta bucket 0 is truncated: header of 1000000000 bytes, only 2 present")


def test_manifest_tensors_must_exist_in_the_receiving_state():
    old, new = states()
    p = encode_delta(old, new)
    refused({"w": old["w"].clone()}, p, "manifest tensor 'h': the receiving state has no tensor 'h'")
    refused({"w": old["w"].clone(), "h": old["h"].float()}, p, "manifest tensor 'h': delta is for bfloat16\\[30\\]")


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_crc_valid_mutation_is_applied_exactly_or_refused_cleanly(data):
    """Fuzz: flip bytes of the header or the body of a valid bucket and fix the CRC. Applying
    it either gives exactly the sender's new state or one DeltaError with nothing written."""
    old, new = states()
    raw = bytearray(encode_delta(old, new).buckets[0])
    hlen = struct.unpack_from("<I", raw, 4)[0]
    lo, hi = data.draw(st.sampled_from([(12, 12 + hlen), (12 + hlen, len(raw))]), label="part")
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        i = data.draw(st.integers(lo, hi - 1), label="byte")
        raw[i] = data.draw(st.integers(0, 255), label="value")
    header, body = bytes(raw[12 : 12 + hlen]), bytes(raw[12 + hlen :])
    state = {k: v.clone() for k, v in old.items()}
    try:
        apply_delta(state, [raw_bucket(b"SCD2", header, body)])
    except DeltaError as e:
        assert "\n" not in str(e)
        assert all(same_bits(old[k], state[k]) for k in old)
    else:
        assert all(same_bits(new[k], state[k]) for k in new)
