import torch

from sparsecraft.oneshot.blockwise import block_targets, capture_inputs, find_blocks
from sparsecraft.oneshot.stats import InputStats, StatsCollector

from .tiny import calib_ids, tiny_llama


def test_input_stats_accumulate_norms_and_hessian():
    x1, x2 = torch.randn(5, 3), torch.randn(2, 4, 3)
    st = InputStats(3, hessian=True)
    st.add(x1)
    st.add(x2)
    allx = torch.cat([x1, x2.reshape(-1, 3)])
    assert st.n == 13
    # sequences as the SparseGPT reference counts them: a 2-D batch is one, (2, 4, 3) is two
    assert st.samples == 3
    assert torch.allclose(st.col_norms, allx.norm(dim=0), atol=1e-6)
    assert torch.allclose(st.hessian(), 2 / 3 * allx.t() @ allx, atol=1e-5)


def test_layers_reading_one_tensor_share_one_hessian():
    model = tiny_llama()
    stack = find_blocks(model)
    ts = block_targets(model, stack)[0]
    inputs = capture_inputs(model, stack, [calib_ids(2), calib_ids(2, seed=1)])
    col = StatsCollector({t.module_name: t.module for t in ts}, hessian=True)
    with col:
        for inp in inputs:
            col.new_pass()
            stack.blocks[0](inp.hidden, *inp.args, **inp.kwargs)
    short = [[n.rsplit(".", 1)[-1] for n in g] for g in col.groups()]
    assert short == [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]
    q = col.stats["model.layers.0.self_attn.q_proj"]
    assert q.n == 2 * 2 * 16 and q.samples == 4  # counted once per batch, not three times
    # the shared statistics equal those of the real input of q_proj
    seen = []
    h = stack.blocks[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.append(i[0].reshape(-1, 32)))
    for inp in inputs:
        stack.blocks[0](inp.hidden, *inp.args, **inp.kwargs)
    h.remove()
    x = torch.cat(seen)
    assert torch.allclose(q.H, x.t() @ x, atol=1e-4)
