"""Data-parallel calibration (gloo, 2 CPU processes): each rank takes every other calibration
batch, statistics are summed per block, every rank ends with the single-process masks."""

import pytest
import torch
from safetensors.torch import load_file

import sparsecraft
from sparsecraft.errors import SparsecraftError
from tests.oneshot.tiny import calib_ids, tiny_llama

from .calib_workers import all_cases
from .spawn import run_ranks

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run every case once on 2 gloo processes (one spawn for the module)."""
    tmp = tmp_path_factory.mktemp("dp")
    res = run_ranks(all_cases, tmp, str(tmp))
    assert all("ok" in r for r in res), [r.get("traceback") for r in res]
    return tmp, [r["ok"] for r in res]


def _masks(state):
    return {k: v for k, v in state.items() if k.endswith("_mask")}


@pytest.mark.slow  # several processes (torch imports): ~10-30 s on 2 shared cores
@pytest.mark.parametrize("how", ["wanda", "sparsegpt", "owl"])
def test_data_parallel_equals_single_process(how, ranks):
    tmp, res = ranks
    assert [r[how]["local_batches"] for r in res] == [4, 3]
    r0, r1 = (load_file(str(tmp / f"{how}-rank{r}.safetensors")) for r in (0, 1))
    single = load_file(str(tmp / f"{how}-single.safetensors"))
    assert _masks(single)
    for k in r0:  # identical on every rank, bit for bit (the same reduced statistics)
        assert torch.equal(r0[k], r1[k]), k
    for k, m in _masks(single).items():
        assert torch.equal(r0[k], m), k  # the single-process masks
    for k, w in single.items():
        if how == "sparsegpt":  # Hessians summed in another order: float tolerance on the updated weights
            torch.testing.assert_close(r0[k].float(), w.float(), rtol=1e-4, atol=1e-5)
        else:  # Wanda's column norms are added in the single-process order: bit-identical
            assert torch.equal(r0[k], w), k


@pytest.mark.slow  # several processes (torch imports): ~10-30 s on 2 shared cores
@pytest.mark.parametrize("what", ["model", "calib"])
def test_ranks_that_disagree_fail_on_every_rank(what, ranks):
    word = "the model" if what == "model" else "the calibration data"
    for r in ranks[1]:
        assert f"ranks disagree on {word}" in r[f"disagree-{what}"], r


@pytest.mark.slow  # several processes (torch imports): ~10-30 s on 2 shared cores
def test_onloaded_folder_only_rank_zero_writes(ranks):
    tmp, res = ranks
    assert [r["folder"]["dp"]["local_batches"] for r in res] == [3, 3]
    out = tmp / "folder-dp"
    assert (out / "model.safetensors.index.json").is_file()
    single = tmp / "folder-single"
    sparsecraft.prune(str(tmp / "src"), 0.5, criterion="wanda", calib=calib_ids(6, 16), batch_size=1,
                      out=str(single), offload="disk", progress=False)
    from sparsecraft.oneshot.onloaded import read_masks

    a, b = read_masks(out), read_masks(single)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_distributed_true_without_a_process_group_is_one_line_error():
    with pytest.raises(SparsecraftError, match="no torch.distributed process group is initialised"):
        sparsecraft.prune(tiny_llama(), 0.5, criterion="wanda", calib=calib_ids(2), distributed=True, progress=False)
    with pytest.raises(SparsecraftError, match="no torch.distributed process group"):
        sparsecraft.prune(tiny_llama(), 0.5, distributed=True, progress=False)



def test_data_parallel_refuses_fused_experts():
    """Per-expert statistics are not summed over ranks: a one-line error before any weight changes
    (the guard runs before the reducer is used, so any stand-in for it shows the check)."""
    from sparsecraft.oneshot.api import _prune_blockwise
    from sparsecraft.oneshot.prune_args import parse_args
    from tests.moe.tiny_hf_moe import ARCHS, tiny_moe

    model = tiny_moe(ARCHS[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = parse_args(0.5, None, "wanda", "unstructured", "uniform", None, None, None, 2, {})
    with pytest.raises(SparsecraftError, match="fused experts"):
        _prune_blockwise(model, 0.5, None, a.crit, a.pat, a.dist, None, [], [], calib_ids(4, 16), 2, False, 0,
                         False, dp=object())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
