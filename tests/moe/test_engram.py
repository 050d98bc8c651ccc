import math

import pytest
import torch
import torch.nn.functional as F

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.engram import Engram
from sparsecraft.moe.engram_hash import byte_compression, hash_ngrams


def make(seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(ngram_sizes=(2, 3), heads=2, table_size=17, embed_dim=8, kernel_size=3, seed=1)
    opts.update(kw)
    return Engram(12, 256, layer_id=1, compression=byte_compression(), **opts)


def rms(x, w, eps=1e-5):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def reference(m, hidden, ids):
    c = m.compression[ids]
    rows = hash_ngrams(c, m.ngram_sizes, m.heads, m.multipliers, m.primes, m.pad_id) + m.offsets
    e = m.table.weight[rows].flatten(-2)
    k = rms(e @ m.key_proj.weight.t(), m.key_norm.weight)
    q = rms(hidden, m.query_norm.weight)
    g = (k * q).sum(-1, keepdim=True) / math.sqrt(12)
    g = torch.sigmoid(torch.sign(g) * torch.sqrt(torch.clamp(g.abs(), min=1e-6)))
    v = g * (e @ m.value_proj.weight.t())
    n = rms(v, m.conv_norm.weight).transpose(1, 2)
    dil, ks = 3, 3  # dilation = largest n-gram order
    padded = F.pad(n, ((ks - 1) * dil, 0))
    conv = F.conv1d(padded, m.conv.weight, groups=12, dilation=dil)
    return v + F.silu(conv).transpose(1, 2)


def test_forward_matches_the_formula():
    m = make()
    ids = torch.tensor([[72, 101, 108, 108, 111, 32, 87], [10, 84, 104, 101, 32, 32, 97]])
    hidden = torch.randn(2, 7, 12)
    assert torch.allclose(m(hidden, ids), reference(m, hidden, ids), atol=1e-5)


def test_addresses_are_deterministic_in_range_and_case_insensitive():
    m = make()
    ids = torch.tensor([[72, 105, 33]])  # "Hi!"
    rows = m.addresses(ids)
    assert rows.shape == (1, 3, 4)
    assert torch.equal(rows, make(seed=5).addresses(ids))  # same seed/layer -> same rows whatever the init
    starts = torch.tensor([0, *m.primes.tolist()]).cumsum(0)
    for h in range(4):
        assert bool(((rows[..., h] >= starts[h]) & (rows[..., h] < starts[h + 1])).all())
    assert torch.equal(rows, m.addresses(torch.tensor([[104, 73, 33]])))  # "hI!"


def test_fetched_rows_from_elsewhere_give_the_same_output():
    m = make()
    ids = torch.randint(0, 256, (2, 9))
    hidden = torch.randn(2, 9, 12)
    rows = m.rows_needed(ids)
    fetched = (rows, m.table.weight.detach()[rows].clone())
    assert torch.equal(m(hidden, ids, fetched=fetched), m(hidden, ids))


def test_output_at_t_ignores_later_tokens():
    m = make()
    ids = torch.randint(0, 256, (1, 10))
    hidden = torch.randn(1, 10, 12)
    ids2, hidden2 = ids.clone(), hidden.clone()
    ids2[0, 7:] = (ids2[0, 7:] + 1) % 256
    hidden2[0, 7:] += 1.0
    assert torch.allclose(m(hidden, ids)[:, :7], m(hidden2, ids2)[:, :7], atol=1e-6)


@pytest.mark.parametrize("kw, word", [({"embed_dim": 7}, "embed_dim"), ({"table_size": 0}, "table_size"),
                                      ({"pad_id": 300}, "pad_id"), ({"kernel_size": 0}, "kernel_size")])
def test_bad_options_are_one_line_errors(kw, word):
    with pytest.raises(SparsecraftError, match=word):
        make(**kw)
