"""Ship sparse weight deltas over ``torch.distributed``: rank ``src`` encodes, everyone
else receives, verifies and applies (SparseRL-Sync), and no receiver ever holds a mix of
two versions.

One round of :meth:`DeltaSync.sync` (every call is collective):

1. every rank contributes the version its state holds (``-1`` once an apply has failed) to
   one ``all_reduce(MIN)`` of ``[version, -version]``: all ranks learn the lowest and the
   highest version;
2. if they are all equal, ``src`` encodes the delta from that version to the next one
   (:func:`~sparsecraft.formats.delta.encode_delta`, base digests reused from the previous
   round); otherwise some receiver missed an update (or failed one) and ``src`` sends a full
   resend (:func:`~sparsecraft.formats.delta.encode_full`) that every receiver applies;
   either way the new version is ``highest + 1``;
3. wire protocol (all ``broadcast`` from ``src``): an int64 bucket count, an int64 tensor of
   bucket sizes, then each bucket as a uint8 tensor;
4. each receiver applies the whole payload at once with
   :func:`~sparsecraft.formats.delta.apply_delta`, which verifies every bucket, size, base
   digest and result digest before writing anything. On failure its state is unchanged, its
   version becomes ``-1`` (so the next round is a full resend) and ``sync`` raises the
   :class:`~sparsecraft.formats.delta.DeltaError`, after every collective of the round, so
   the ranks stay in step. If ``src`` cannot encode (say ``new_state`` lost a tensor), it
   broadcasts that instead of a payload and every rank raises, its state and version unchanged.

A receiver holds the payload (plus 8 bytes per sparse change) besides its state. Works with
any backend that broadcasts and all-reduces CPU uint8/int64 tensors (gloo; for NCCL move the
tensors to the device yourself).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from sparsecraft.errors import SparsecraftError
from sparsecraft.formats.delta import DEFAULT_BUCKET, DeltaError, DeltaPayload, apply_delta, encode_delta, encode_full

UNKNOWN = -1  # the version of a receiver whose last apply failed
_FAILED = -1  # bucket count ``src`` broadcasts when it could not encode the round


def _rank(group: Any) -> int:
    return dist.get_rank(group) if group is not None else dist.get_rank()


def broadcast_payload(
    payload: DeltaPayload | None, src: int = 0, group: Any = None
) -> tuple[list[np.ndarray], int]:
    """On ``src`` send ``payload``; elsewhere receive it. Returns (the buckets as uint8
    arrays -- empty on ``src`` --, the payload size in bytes) on every rank."""
    is_src = _rank(group) == src
    count = torch.tensor([len(payload.buckets) if is_src else 0], dtype=torch.int64)
    dist.broadcast(count, src, group=group)
    if int(count.item()) == _FAILED:
        raise DeltaError(f"rank {src} could not encode this round's delta (it raised there); nothing was written")
    if int(count.item()) < 0:
        raise DeltaError(f"delta broadcast announced {int(count.item())} buckets")
    sizes = torch.zeros(int(count.item()), dtype=torch.int64)
    if is_src:
        sizes[:] = torch.tensor([len(b) for b in payload.buckets], dtype=torch.int64)
    dist.broadcast(sizes, src, group=group)
    if sizes.numel() and int(sizes.min()) < 0:
        raise DeltaError("delta broadcast announced a negative bucket size")
    received = []
    for i, size in enumerate(sizes.tolist()):
        if is_src:
            buf = torch.from_numpy(np.frombuffer(payload.buckets[i], dtype=np.uint8).copy())
        else:
            buf = torch.empty(size, dtype=torch.uint8)
        dist.broadcast(buf, src, group=group)
        if not is_src:
            received.append(buf.numpy())
    return received, int(sizes.sum().item())


class DeltaSync:
    """Keep replicas of a state bit-identical by sending only what changed, with versions.

    On ``src`` the object keeps a private snapshot of the last synced state and the digests
    of its tensors; ``sync(new_state)`` sends the delta from the snapshot to ``new_state``
    and updates the snapshot. On the other ranks ``sync()`` receives it into ``state`` (the
    live tensors, e.g. ``model.state_dict()``), in place. Every rank starts at ``version``
    (the states must then be identical; if they are not, the first delta is refused by the
    base check and the next round resends the full state).
    """

    def __init__(
        self, state: dict[str, torch.Tensor], src: int = 0, group: Any = None, bucket_bytes: int = DEFAULT_BUCKET,
        version: int = 0,
    ) -> None:
        if type(version) is not int or version < 0:
            raise SparsecraftError(f"version must be an integer >= 0, got {version!r}")
        self.src, self.group, self.bucket_bytes, self.version = src, group, bucket_bytes, version
        self.is_src = _rank(group) == src
        self.state = {k: v.detach().clone() for k, v in state.items()} if self.is_src else state
        self._digests: dict[str, int] | None = None  # src: digests of the snapshot, once known

    def _versions(self) -> tuple[int, int]:
        v = torch.tensor([self.version, -self.version], dtype=torch.int64)
        dist.all_reduce(v, op=dist.ReduceOp.MIN, group=self.group)
        return int(v[0]), -int(v[1])

    def sync(self, new_state: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """One round; returns ``nbytes``, ``version`` (the new one) and ``full`` (whether the
        whole state was resent) on every rank, plus the payload statistics on ``src``."""
        if self.is_src and new_state is None:
            raise SparsecraftError("the source rank must pass the new state to sync(new_state)")
        lowest, highest = self._versions()
        full, to = lowest != highest or lowest < 0, max(highest, 0) + 1
        if self.is_src:
            new = {k: v.detach() for k, v in new_state.items()}
            try:
                if full:
                    payload = encode_full(new, self.bucket_bytes, to_version=to)
                else:
                    payload = encode_delta(self.state, new, self.bucket_bytes, from_version=self.version,
                                           to_version=to, base_digests=self._digests)
            except Exception:  # tell the receivers, so they raise instead of waiting forever
                dist.broadcast(torch.tensor([_FAILED], dtype=torch.int64), self.src, group=self.group)
                raise
            broadcast_payload(payload, src=self.src, group=self.group)
            with torch.no_grad():
                for name in payload.touched:  # the snapshot becomes what the receivers now hold
                    self.state[name].copy_(new[name])
            self._digests, self.version = payload.result_digests, to
            return {**payload.stats, "nbytes": payload.nbytes, "version": to, "full": full}
        buckets, nbytes = broadcast_payload(None, src=self.src, group=self.group)
        try:
            apply_delta(self.state, buckets, version=None if full else self.version)
        except SparsecraftError:
            self.version = UNKNOWN
            raise
        self.version = to
        return {"nbytes": nbytes, "version": to, "full": full}
