"""Process-group helpers in one process: no group means single-process behaviour."""

import pytest
import torch

from sparsecraft.distributed import group
from sparsecraft.errors import SparsecraftError


def test_single_process_defaults():
    assert not group.active() and group.rank() == 0 and group.world_size() == 1 and group.is_writer()
    assert group.resolve(None) is False and group.resolve(False) is False
    with pytest.raises(SparsecraftError, match="no torch.distributed process group"):
        group.resolve(True)
    with pytest.raises(SparsecraftError, match="True, False or None"):
        group.resolve("yes")  # type: ignore[arg-type]
    assert group.agree([1, "a"], "x") == [1, "a"]
    group.raise_together(None)


def test_shard_is_round_robin():
    assert group.shard(7, 0, 2) == [0, 2, 4, 6] and group.shard(7, 1, 2) == [1, 3, 5]
    assert sorted(group.shard(10, 0, 3) + group.shard(10, 1, 3) + group.shard(10, 2, 3)) == list(range(10))


def test_ordered_sum_is_the_sequential_sum_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(50, generator=g) * 10 ** float(torch.randint(-3, 4, (1,), generator=g)) for _ in range(9)]
    acc = torch.zeros(50)
    for p in parts:  # what one process does: acc += part, in order
        acc += p
    got = group.ordered_sum(dict(enumerate(parts)), 9, parts[0])
    assert torch.equal(got, acc)


def test_init_from_env_outside_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SparsecraftError, match="torchrun"):
        group.init_from_env()


def test_fingerprint_sees_a_changed_weight():
    a = [("w", torch.ones(3, 3)), ("b", torch.zeros(3))]
    b = [("w", torch.ones(3, 3) * 2), ("b", torch.zeros(3))]
    assert group.fingerprint(a) == group.fingerprint(a) != group.fingerprint(b)
    assert group.fingerprint([("w", torch.empty(3, 3, device="meta"))])[0] == ["w", [3, 3], "torch.float32"]
