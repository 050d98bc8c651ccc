import pytest
import torch
import torch.nn.functional as F

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.stem import STEMFFN


def test_output_is_down_of_silu_gate_times_the_token_row():
    torch.manual_seed(0)
    m = STEMFFN(6, 5, vocab_size=11)
    x, ids = torch.randn(2, 3, 6), torch.tensor([[1, 4, 1], [10, 0, 4]])
    want = (F.silu(x @ m.gate_proj.weight.t()) * m.up_table.weight[ids]) @ m.down_proj.weight.t()
    assert torch.allclose(m(x, ids), want, atol=1e-6)


def test_only_the_rows_of_the_batch_get_gradients_and_fetched_rows_give_the_same_output():
    torch.manual_seed(1)
    m = STEMFFN(4, 3, vocab_size=9)
    x, ids = torch.randn(1, 4, 4), torch.tensor([[7, 2, 7, 5]])
    m(x, ids).sum().backward()
    used = m.up_table.weight.grad.abs().sum(1) > 0
    assert used.nonzero().reshape(-1).tolist() == [2, 5, 7]
    rows = m.rows_needed(ids)
    assert rows.tolist() == [2, 5, 7]
    fetched = (rows, m.up_table.weight.detach()[rows].clone())
    assert torch.equal(m(x, ids, fetched=fetched), m(x, ids))


def test_token_ids_are_required_and_shapes_checked():
    with pytest.raises(SparsecraftError, match="needs the token ids"):
        STEMFFN(4, 3, 9)(torch.randn(1, 2, 4))
    with pytest.raises(SparsecraftError, match="vocab_size must be an integer >= 1, got 0"):
        STEMFFN(4, 3, 0)


def test_table_starts_near_one():
    torch.manual_seed(2)
    w = STEMFFN(4, 64, 50).up_table.weight.detach()
    assert abs(float(w.mean()) - 1.0) < 0.01 and 0.01 < float(w.std()) < 0.03
