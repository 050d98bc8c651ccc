"""Two CPU processes (gloo): rank 0 sends versioned sparse deltas, rank 1 ends bit-identical;
a receiver that diverged or missed an update is refused without a write, then healed by a
full resend (issue 10)."""

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


def same(a, b) -> bool:
    return all(torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)) for k in b)


def worker(rank: int, port: int, results) -> None:
    from sparsecraft.formats.delta import DeltaError
    from sparsecraft.formats.transport import DeltaSync

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        live = make_states(0)
        if rank == 1:  # the receiver's copy starts identical, then only receives deltas
            live = {k: v.clone() for k, v in live.items()}
        sync = DeltaSync(live, src=0, bucket_bytes=2048)
        for step in (1, 2, 3, 4, 5, 6, 7):
            sent = make_states(min(step, 6)) if rank == 0 else None
            if rank == 0 and step == 6:
                sent.pop("h")  # the sender cannot encode: every rank raises, nobody waits forever
            if rank == 1 and step == 3:
                live["w"][7, 7] += 1.0  # the receiver's state drifts: the step-3 delta must be refused
            if rank == 1 and step == 5:
                sync.version -= 1  # as if it had missed update 4
            before = {k: v.clone() for k, v in live.items()}
            try:
                stats = sync.sync(sent)
            except DeltaError as e:
                if rank == 1 or step == 6:
                    results.put((step, rank, "refused", same(live, before), str(e)))
                continue
            if rank == 1:
                results.put((step, rank, stats["full"], same(live, make_states(min(step, 6))), stats["nbytes"]))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_sync_is_bit_identical_and_heals_a_diverged_receiver():
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    mp.spawn(worker, args=(free_port(), results), nprocs=2, join=True)
    got = {}
    for r in (results.get(timeout=5) for _ in range(8)):
        got[r[0] if r[1] == 1 else (r[0], 0)] = r[2:]
    dense_model = 300 * 200 * 4 + 4000 * 2
    assert got[1][:2] == (False, True) and got[1][2] < 0.1 * dense_model  # ~1% of w changed
    assert got[2][:2] == (False, True) and got[2][2] > 4000 * 2  # h fully changed -> sent dense
    refused, unchanged, msg = got[3]
    assert refused == "refused" and unchanged, "a refused delta must leave the receiver as it was"
    assert "tensor 'w'" in msg and "not version 2" in msg
    assert got[4][:2] == (True, True) and got[4][2] > dense_model  # full resend heals it
    assert got[5][:2] == (True, True)  # missed an update -> full resend, never a mixed state
    assert got[6][:2] == ("refused", True) and "rank 0 could not encode" in got[6][2]
    assert got[(6, 0)][0] == "refused" and "differ in their tensors" in got[(6, 0)][2]
    assert got[7][:2] == (False, True) and got[7][2] < 0.1 * dense_model  # back to sparse deltas
