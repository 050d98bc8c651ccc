"""Engram's addressing (Cheng et al. 2026, "Conditional Memory via Scalable Lookup"; reference
code deepseek-ai/Engram ``engram_demo_v1.py``): token-id compression, N-gram extraction and
multi-head hashing. Everything here is a pure function of the token ids, so the table rows a
batch reads are known before the model runs (deterministic addressing).

* **Compression**: token ids that differ only by case, accents, Unicode form or whitespace map
  to one canonical id (the reference normalises each token's text with NFKC, NFD, accent
  stripping, lower-casing and whitespace collapsing; tokens that decode to invalid UTF-8 keep
  their raw spelling). :func:`tokenizer_compression` does this for a Hugging Face tokenizer,
  :func:`byte_compression` for the byte-level tokenizer (A-Z -> a-z, whitespace -> space).
* **N-grams**: for position t and order n the compressed ids c_t, c_{t-1}, ..., c_{t-n+1}
  (``pad_id`` before the start of the sequence).
* **Hash** (per layer l): odd multipliers m_0..m_{N-1} drawn from ``numpy.random.default_rng(seed +
  10007 * l)`` below INT64_MAX / vocab_size (so no product overflows); mix = (c_t * m_0) XOR
  (c_{t-1} * m_1) XOR ... ; head h of order n reads row ``mix mod p_{n,h}`` of its own table, the
  p's being distinct primes, the first >= ``table_size`` (each next one above the previous, and
  none reused by another layer), as in the reference.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from sparsecraft.errors import SparsecraftError

INT64_MAX = np.iinfo(np.int64).max
LAYER_PRIME = 10007  #: seed stride per layer (reference value)
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (enough for any table size)."""
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def next_prime(after: int, taken: set[int]) -> int:
    """The smallest prime > ``after`` not in ``taken``."""
    n = after + 1
    while not is_prime(n) or n in taken:
        n += 1
    return n


def normalize_token_text(text: str) -> str:
    """NFKC, NFD, strip accents, lower-case, collapse whitespace runs to one space, strip (a token
    that is only whitespace becomes one space)."""
    t = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text))
    t = "".join(ch for ch in t if unicodedata.category(ch) != "Mn").lower()
    t = re.sub(r"\s+", " ", t)
    return " " if t == " " else t.strip()


def compress_keys(keys: Iterable[str]) -> torch.Tensor:
    """Lookup old id -> new id where equal keys share the id of their first occurrence (new ids
    are dense, in order of first appearance)."""
    new: dict[str, int] = {}
    return torch.tensor([new.setdefault(k, len(new)) for k in keys], dtype=torch.long)


def byte_compression() -> torch.Tensor:
    """Compression lookup of the byte-level tokenizer (256 ids): A-Z as a-z, every whitespace byte
    as the space."""
    keys = []
    for b in range(256):
        ch = chr(b)
        keys.append(" " if ch in " \t\n\r\x0b\x0c" else ch.lower() if "A" <= ch <= "Z" else ch)
    return compress_keys(keys)


def tokenizer_compression(tokenizer: Any) -> torch.Tensor:
    """Compression lookup of a Hugging Face tokenizer (each id's decoded text, normalised)."""
    keys = []
    for tid in range(len(tokenizer)):
        text = tokenizer.decode([tid], skip_special_tokens=False)
        if "\ufffd" in text:
            keys.append("\x00raw:" + str(tokenizer.convert_ids_to_tokens(tid)))
        else:
            norm = normalize_token_text(text)
            keys.append(norm if norm else text)
    return compress_keys(keys)


def layer_multipliers(vocab_size: int, max_n: int, layer_id: int, seed: int) -> torch.Tensor:
    """The odd hash multipliers of one layer (int64; products with ids < vocab_size never overflow)."""
    half = max(1, int(INT64_MAX // vocab_size) // 2)
    r = np.random.default_rng(int(seed) + LAYER_PRIME * int(layer_id)).integers(0, half, size=max_n, dtype=np.int64)
    return torch.from_numpy(r * 2 + 1)


def head_primes(ngram_sizes: Sequence[int], heads: int, table_size: int, taken: set[int]) -> list[int]:
    """One distinct prime table size per (order, head), in order; adds them to ``taken``."""
    out = []
    for _ in ngram_sizes:
        start = table_size - 1
        for _ in range(heads):
            p = next_prime(start, taken)
            taken.add(p)
            out.append(p)
            start = p
    return out


def check_engram_shape(ngram_sizes: Any, heads: Any, table_size: Any) -> tuple[int, ...]:
    """Validate the addressing options; returns the n-gram orders as a tuple."""
    if isinstance(table_size, bool) or not isinstance(table_size, int) or table_size < 1:
        raise SparsecraftError(f"engram table_size must be an integer >= 1 (rows per hash head), got {table_size!r}")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise SparsecraftError(f"engram heads must be an integer >= 1, got {heads!r}")
    sizes = tuple(ngram_sizes) if isinstance(ngram_sizes, (list, tuple)) else (ngram_sizes,)
    if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in sizes) \
            or len(set(sizes)) != len(sizes):
        raise SparsecraftError(f"engram ngram_sizes must be distinct integers >= 2, got {ngram_sizes!r}")
    return sizes


def hash_ngrams(compressed: torch.Tensor, ngram_sizes: Sequence[int], heads: int, multipliers: torch.Tensor,
                primes: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, T, len(ngram_sizes) * heads) rows, head-local (before table offsets), of (B, T) ids."""
    b, t = compressed.shape
    max_n = max(ngram_sizes)
    padded = torch.cat([compressed.new_full((b, max_n - 1), pad_id), compressed], dim=1)
    shifted = [padded[:, max_n - 1 - k : max_n - 1 - k + t] for k in range(max_n)]
    m = multipliers.to(compressed.device)
    out, j = [], 0
    for n in ngram_sizes:
        mix = shifted[0] * m[0]
        for k in range(1, n):
            mix = torch.bitwise_xor(mix, shifted[k] * m[k])
        for _ in range(heads):
            out.append(torch.remainder(mix, primes[j]))
            j += 1
    return torch.stack(out, dim=-1)
