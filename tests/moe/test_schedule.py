import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.model import SparseLM, SparseLMConfig
from sparsecraft.moe.schedule import TopKSchedule, apply_top_k, for_model, sigma_moe_tiny


def test_a_number_is_the_same_k_everywhere():
    s = TopKSchedule(2, n_layers=3, n_experts=8, total_steps=100)
    assert s.ks(0) == s.ks(100) == [2, 2, 2]


def test_linear_anneal_rounds_halves_up():
    s = TopKSchedule({"type": "linear", "initial": 4, "final": 1, "end": 100}, 2, 8, 100)
    assert [s.k(0, t) for t in (0, 50, 51, 100, 150)] == [4, 3, 2, 1, 1]  # 4, 2.5, 2.47, 1


def test_per_layer_pairs_with_default():
    spec = {"layers": {"0": [[0, 8], [10, 1]], "2": [[0, 4], [5, 2], [10, 1]], "default": 1}}
    s = TopKSchedule(spec, 3, 8, 20)
    assert s.ks(0) == [8, 1, 4] and s.ks(5) == [8, 1, 2] and s.ks(10) == [1, 1, 1]


def test_sigma_moe_tiny_spec_activates_more_experts_low_then_switches():
    spec = sigma_moe_tiny(10, switch_step=50)
    s = TopKSchedule(spec, 10, 96, 100)
    assert s.ks(0) == [8, 8, 6, 6, 4, 4, 2, 2, 1, 1]
    assert s.ks(49) == s.ks(0) and s.ks(50) == [1] * 10


@pytest.mark.parametrize("spec, word", [
    ({"type": "linear", "initial": 2, "final": 0, "end": 10}, "ends \\(step 10\\) at 0, which rounds to k=0"),
    ([[0, 2], [5, 0.4], [8, 1]], "is at step 5 0.4"),
    (9, "ends \\(step 10\\) at 9, which rounds to k=9; k must stay in \\[1, n_experts=8\\]"),
    ({"layers": {"5": 1}}, "layer key '5'"),
    ({"layers": [1, 1]}, "lists 2 schedules for 3 MoE layers"),
    ({"layers": {"0": 1}, "steps": 3}, "unknown key"),
    ({"layers": {"0": "fast", "default": 1}}, "MoE layer 0"),
])
def test_bad_schedules_are_one_line_errors(spec, word):
    with pytest.raises(SparsecraftError, match=word) as e:
        TopKSchedule(spec, 3, 8, 10)
    assert "\n" not in str(e.value)


def test_apply_top_k_sets_every_router_and_defaults_to_the_configured_k():
    torch.manual_seed(0)
    model = SparseLM(SparseLMConfig(d_model=16, n_layers=3, n_heads=2, d_ff=16, ffn=["moe", "dense", "moe"],
                                    moe={"n_experts": 4, "expert_dim": 8, "top_k": 2}))
    s = for_model({"layers": {"0": [[0, 4], [3, 1]]}}, model, 10)
    assert apply_top_k(model, s, 0) == [4, 2]
    assert [m.mlp.router.top_k for m in (model.layers[0], model.layers[2])] == [4, 2]
    assert apply_top_k(model, s, 5) == [1, 2]
    with pytest.raises(SparsecraftError, match="needs a model with MoE layers"):
        for_model(1, SparseLM(SparseLMConfig(d_model=16, n_layers=1, n_heads=2, d_ff=16)), 10)
