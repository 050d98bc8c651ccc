"""Two CPU processes (gloo): rank 0 sends sparse deltas, rank 1 ends bit-identical."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_states(step: int) -> dict[str, torch.Tensor]:
    """Deterministic trajectory of states; both ranks can rebuild it to check."""
    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(300, 200, generator=g), "h": torch.randn(4000, generator=g).half()}
    for s in range(1, step + 1):
        g = torch.Generator().manual_seed(s)
        hit = torch.rand(state["w"].shape, generator=g) < 0.01
        state["w"] = torch.where(hit, state["w"] + 1, state["w"])
        state["h"] = state["h"] * 2 if s == 2 else state["h"]  # step 2: dense fallback
        state["w"][0, 0] = float("nan") if s == 3 else state["w"][0, 0]
    return state


def worker(rank: int, port: int, results) -> None:
    from sparsecraft.formats.transport import DeltaSync

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        live = make_states(0)
        if rank == 1:  # the receiver's copy starts identical, then only receives deltas
            live = {k: v.clone() for k, v in live.items()}
        sync = DeltaSync(live, src=0, bucket_bytes=2048)
        sizes = []
        for step in (1, 2, 3):
            stats = sync.sync(make_states(step) if rank == 0 else None)
            sizes.append(stats["nbytes"])
            if rank == 1:
                want = make_states(step)
                ok = all(torch.equal(live[k].view(torch.uint8), want[k].view(torch.uint8)) for k in want)
                results.put((step, ok, stats["nbytes"]))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_sync_is_bit_identical():
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    mp.spawn(worker, args=(free_port(), results), nprocs=2, join=True)
    got = sorted(results.get(timeout=5) for _ in range(3))
    assert [ok for _, ok, _ in got] == [True, True, True]
    dense_model = 300 * 200 * 4 + 4000 * 2
    assert got[0][2] < 0.1 * dense_model  # step 1: ~1% of w changed
    assert got[1][2] > 4000 * 2  # step 2: h fully changed -> sent dense
