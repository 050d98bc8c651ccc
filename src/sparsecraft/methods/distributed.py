"""torch.distributed helpers of the sparse-training methods (FSDP2 shards: :mod:`sparsecraft.distributed.fsdp`)."""

from __future__ import annotations

import torch

from sparsecraft.distributed import fsdp


def sync_masks(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Under torch.distributed, broadcast rank 0's masks so every rank holds the same ones."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return masks
    out = {}
    for name in sorted(masks):
        if fsdp.is_dtensor(masks[name]):  # an FSDP2 shard: each rank owns its rows
            out[name] = masks[name]
            continue
        buf = masks[name].to(torch.uint8).contiguous()
        dist.broadcast(buf, src=0)
        out[name] = buf.to(torch.bool)
    return out
