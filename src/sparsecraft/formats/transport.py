"""Ship sparse weight deltas over ``torch.distributed``: rank ``src`` encodes, everyone
else receives and applies, bucket by bucket (SparseRL-Sync).

Wire protocol (all ``broadcast`` from ``src``): an int64 tensor ``[n_buckets, size_1, ...,
size_n]`` sized by a first int64 broadcast of ``n_buckets``, then each bucket as a uint8
tensor. Receivers apply a bucket as soon as it arrives, so at most one bucket is held in
memory besides the state. Works with any backend that broadcasts CPU uint8/int64 tensors
(gloo; for NCCL move the bucket tensors to the device yourself).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from sparsecraft.formats.delta import DEFAULT_BUCKET, DeltaPayload, apply_bucket, apply_delta, encode_delta


def _rank(group: Any) -> int:
    return dist.get_rank(group) if group is not None else dist.get_rank()


def broadcast_payload(
    payload: DeltaPayload | None, state: dict[str, torch.Tensor] | None = None, src: int = 0, group: Any = None
) -> int:
    """On ``src`` send ``payload``; elsewhere receive it and, if ``state`` is given, apply each
    bucket to it in place. Returns the payload size in bytes (on every rank)."""
    is_src = _rank(group) == src
    count = torch.tensor([len(payload.buckets) if is_src else 0], dtype=torch.int64)
    dist.broadcast(count, src, group=group)
    sizes = torch.zeros(int(count.item()), dtype=torch.int64)
    if is_src:
        sizes[:] = torch.tensor([len(b) for b in payload.buckets], dtype=torch.int64)
    dist.broadcast(sizes, src, group=group)
    for i, size in enumerate(sizes.tolist()):
        if is_src:
            buf = torch.from_numpy(np.frombuffer(payload.buckets[i], dtype=np.uint8).copy())
        else:
            buf = torch.empty(size, dtype=torch.uint8)
        dist.broadcast(buf, src, group=group)
        if not is_src and state is not None:
            with torch.no_grad():
                apply_bucket(state, memoryview(buf.numpy()))  # no copy
    return int(sizes.sum().item())


class DeltaSync:
    """Keep replicas of a state bit-identical by sending only what changed.

    On ``src`` the object keeps a private snapshot of the last synced state;
    ``sync(new_state)`` encodes ``new_state`` against it, broadcasts the delta and updates
    the snapshot. On the other ranks ``sync()`` receives the delta into ``state`` (the live
    tensors, e.g. ``model.state_dict()``), in place.
    """

    def __init__(
        self, state: dict[str, torch.Tensor], src: int = 0, group: Any = None, bucket_bytes: int = DEFAULT_BUCKET
    ) -> None:
        self.src, self.group, self.bucket_bytes = src, group, bucket_bytes
        self.is_src = _rank(group) == src
        self.state = {k: v.detach().clone() for k, v in state.items()} if self.is_src else state

    def sync(self, new_state: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """One round; returns the payload statistics (``nbytes`` on every rank)."""
        if self.is_src:
            if new_state is None:
                raise ValueError("the source rank must pass the new state to sync()")
            payload = encode_delta(self.state, {k: v.detach() for k, v in new_state.items()}, self.bucket_bytes)
            broadcast_payload(payload, src=self.src, group=self.group)
            apply_delta(self.state, payload)
            return {**payload.stats, "nbytes": payload.nbytes}
        return {"nbytes": broadcast_payload(None, self.state, src=self.src, group=self.group)}
