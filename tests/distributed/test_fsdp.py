"""FSDP2 sparse training (gloo, 2 CPU processes): masks live on the parameter shards, RigL / SET /
GMP decide on the gathered layer, and the run equals a single-process run with the same data
order; a sharded checkpoint resumes bit-exactly; the HF Trainer callback's hooks work too."""

import pytest
import torch

from sparsecraft.distributed import fsdp

from .fsdp_workers import CONFIGS, everything
from .spawn import run_ranks

pytest.importorskip("torch.distributed.fsdp")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    res = run_ranks(everything, tmp, str(tmp))
    assert all("ok" in r for r in res), [r.get("traceback") for r in res]
    return [r["ok"] for r in res]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_fsdp_run_equals_single_process(kind, ranks):
    for r in ranks:
        out = r[kind]
        assert out["exact_every_step"]  # pruned entries of every local shard are 0 after every step
        assert out["masks_equal_single"]
        assert out["counts"] == out["ref_counts"]  # exact per-layer counts
        assert all(out["nonzeros"][n] <= c for n, c in out["counts"].items())
        assert out["updates"] == out["ref_updates"] > 0
        assert out["max_diff"] < 1e-5  # gradients averaged over ranks: float tolerance


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_sharded_checkpoint_resumes_bit_exactly(kind, ranks):
    for r in ranks:
        assert r[kind]["resume_bit_exact"] and r[kind]["resume_step"] == 12


def test_hf_callback_hooks_on_fsdp2(ranks):
    for r in ranks:
        assert r["hf"]["exact"] and r["hf"]["updates"] == 3
    assert ranks[0]["hf"]["counts"] == ranks[1]["hf"]["counts"]


def test_helpers_pass_plain_tensors_through():
    t = torch.arange(6.0).reshape(2, 3)
    assert fsdp.local(t) is t and fsdp.full(t) is t and fsdp.shard_like(t, t) is t
    assert not fsdp.is_dtensor(t)
