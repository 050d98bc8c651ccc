import pytest
import torch
from torch import nn

from sparsecraft.layout import expert_param_names, layout_for
from sparsecraft.moe.experts import FusedExperts
from sparsecraft.targets import find_targets


class TransposedExperts(nn.Module):
    """transformers-style experts stored (E, in, out) (``is_transposed``)."""

    is_transposed = True
    has_gate = True

    def __init__(self):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(3, 4, 8))  # (E, d_model, 2 * d_expert)
        self.down_proj = nn.Parameter(torch.randn(3, 4, 4))  # (E, d_expert, d_model)


def test_expert_row_view_stacks_each_experts_out_by_in_matrix():
    ex = FusedExperts(3, 4, 5)  # gate_up (3, 10, 4), down (3, 4, 5)
    lay = layout_for(ex, ex.gate_up_proj)
    assert (lay.kind, lay.rows, lay.cols, lay.experts) == ("experts", 30, 4, 3)
    rows = lay.to_rows(ex.gate_up_proj.detach())
    assert torch.equal(rows[10:20], ex.gate_up_proj[1].detach())
    assert torch.equal(lay.from_rows(rows), ex.gate_up_proj.detach())


def test_transposed_experts_are_transposed_per_expert():
    ex = TransposedExperts()
    lay = layout_for(ex, ex.gate_up_proj)
    assert (lay.kind, lay.rows, lay.cols, lay.experts) == ("experts_transposed", 24, 4, 3)
    rows = lay.to_rows(ex.gate_up_proj.detach())
    assert torch.equal(rows[8:16], ex.gate_up_proj[1].detach().t())  # expert 1 as (out, in)
    assert torch.equal(lay.from_rows(rows), ex.gate_up_proj.detach())


def test_expert_params_are_found_and_follow_targets_and_ignore():
    model = nn.Sequential(nn.Linear(4, 4), FusedExperts(2, 4, 4), TransposedExperts())
    assert expert_param_names(model[1]) == ("gate_up_proj", "down_proj")
    assert expert_param_names(model[2]) == ("gate_up_proj", "down_proj")
    assert expert_param_names(model[0]) == ()
    assert [t.name for t in find_targets(model)] == ["0.weight", "1.gate_up_proj", "1.down_proj", "2.gate_up_proj",
                                                      "2.down_proj"]
    assert [t.name for t in find_targets(model, ignore=["down_proj"])] == ["0.weight", "1.gate_up_proj",
                                                                           "2.gate_up_proj"]


@pytest.mark.parametrize("cls", [FusedExperts, TransposedExperts])
def test_nm_masks_run_along_each_experts_input_dimension(cls):
    import sparsecraft

    torch.manual_seed(0)
    ex = cls(2, 8, 4) if cls is FusedExperts else cls()
    model = nn.Sequential(ex)
    sparsecraft.prune(model, 0.0, pattern="2:4", progress=False)
    for name in ("gate_up_proj", "down_proj"):
        w = getattr(ex, name).detach()
        per_expert = w.transpose(1, 2) if cls is TransposedExperts else w  # (E, out, in)
        groups = (per_expert.reshape(*per_expert.shape[:2], -1, 4) != 0).sum(-1)
        assert bool((groups == 2).all()), name
