import numpy as np
import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.engram_hash import (
    INT64_MAX,
    byte_compression,
    check_engram_shape,
    hash_ngrams,
    head_primes,
    is_prime,
    layer_multipliers,
    next_prime,
    normalize_token_text,
    tokenizer_compression,
)


def test_primes():
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert is_prime(1_000_003) and not is_prime(1_000_001)
    assert next_prime(10, set()) == 11 and next_prime(10, {11}) == 13


def test_head_primes_are_distinct_and_start_at_the_table_size():
    taken: set[int] = set()
    assert head_primes((2, 3), 2, 10, taken) == [11, 13, 17, 19]  # order 3 restarts at 10: 11, 13 are taken
    assert head_primes((2,), 2, 11, taken) == [23, 29]  # another layer never reuses a prime
    assert head_primes((2,), 1, 7, set()) == [7]  # the table size itself when prime


def test_multipliers_are_odd_seeded_per_layer_and_cannot_overflow():
    m = layer_multipliers(vocab_size=1000, max_n=3, layer_id=2, seed=5)
    r = np.random.default_rng(5 + 10007 * 2).integers(0, (INT64_MAX // 1000) // 2, size=3, dtype=np.int64)
    assert m.tolist() == (r * 2 + 1).tolist()
    assert all(v % 2 == 1 and v * 999 <= INT64_MAX for v in m.tolist())
    assert not torch.equal(m, layer_multipliers(1000, 3, 3, 5))


def test_hash_of_bigrams_and_trigrams_by_hand():
    ids = torch.tensor([[3, 5, 7]])
    m = torch.tensor([1, 3, 5])
    rows = hash_ngrams(ids, (2, 3), 1, m, torch.tensor([11, 13]), pad_id=0)
    # 2-gram: t0 3^(0*3)=3, t1 5^(3*3)=12 -> 1, t2 7^(5*3)=8; 3-gram: t0 3, t1 5^9^0=12, t2 7^15^(3*5)=7
    assert rows[0, :, 0].tolist() == [3, 1, 8]
    assert rows[0, :, 1].tolist() == [3, 12, 7]


def test_padding_uses_pad_id_before_the_sequence():
    m = torch.tensor([1, 2])
    rows = hash_ngrams(torch.tensor([[4]]), (2,), 1, m, torch.tensor([101]), pad_id=9)
    assert rows.item() == (4 ^ (9 * 2)) % 101


def test_byte_compression_merges_case_and_whitespace():
    c = byte_compression()
    assert c.shape == (256,)
    assert c[ord("A")] == c[ord("a")] and c[ord("\n")] == c[ord(" ")] == c[ord("\t")]
    assert c[ord("a")] != c[ord("b")] and c[ord("1")] != c[ord("a")]
    assert int(c.max()) + 1 == 256 - 26 - 5


def test_token_text_normalisation():
    assert normalize_token_text("Élan") == "elan"
    assert normalize_token_text("  Hello\n") == "hello"
    assert normalize_token_text("\n\n") == " "
    assert normalize_token_text("ﬁne") == "fine"  # NFKC ligature


class FakeTokenizer:
    pieces = ["Hello", "hello", " HELLO", "\ufffd", "\ufffd", "x"]

    def __len__(self):
        return len(self.pieces)

    def decode(self, ids, skip_special_tokens=False):
        return self.pieces[ids[0]]

    def convert_ids_to_tokens(self, tid):
        return f"<0x{tid:02X}>"


def test_tokenizer_compression_maps_variants_to_one_id_and_keeps_broken_bytes_apart():
    c = tokenizer_compression(FakeTokenizer()).tolist()
    assert c[0] == c[1] == c[2] == 0
    assert c[3] != c[4] and len(set(c)) == 4


@pytest.mark.parametrize("args, word", [(((2, 3), 4, 0), "table_size must be an integer >= 1"),
                                        (((2, 3), 0, 10), "heads"), (((1, 2), 2, 10), "ngram_sizes"),
                                        (((2, 2), 2, 10), "ngram_sizes")])
def test_bad_addressing_options_are_one_line_errors(args, word):
    with pytest.raises(SparsecraftError, match=word):
        check_engram_shape(*args)
