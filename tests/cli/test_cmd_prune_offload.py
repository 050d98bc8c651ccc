"""``sparsecraft prune --offload disk`` (block by block from the safetensors) and ``torchrun ...
prune --distributed`` (data-parallel calibration, rank 0 writes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsecraft.cli.main import main
from sparsecraft.oneshot.onloaded import read_masks

from .tiny_hf import make_tiny_hf

ARGS = ["--n-calib", "4", "--n-eval", "2", "--seq-len", "32", "--batch-size", "1", "--threads", "1"]
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_hf(tmp_path_factory.mktemp("tiny"))


def test_offload_disk_writes_the_in_memory_result(tiny, tmp_path, capsys):
    model_dir, text = tiny
    common = ["prune", "--model", str(model_dir), "--criterion", "wanda", "--calib", str(text), "--no-dense", *ARGS]
    assert main([*common, "--offload", "disk", "--out", str(tmp_path / "disk")]) == 0
    printed = capsys.readouterr().out
    assert "offload         disk (offload='disk')" in printed and "not measured" in printed
    assert main([*common, "--offload", "none", "--out", str(tmp_path / "mem")]) == 0
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(str(tmp_path / "disk" / "model")).state_dict()
    b = AutoModelForCausalLM.from_pretrained(str(tmp_path / "mem" / "model")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)  # same weights, zeros included
    assert read_masks(tmp_path / "disk" / "model")
    report = json.loads((tmp_path / "disk" / "report.json").read_text())
    assert report["rows"][0]["perplexity"] is None and report["offload"].startswith("disk")


def test_auto_offload_small_model_stays_in_memory(tiny, tmp_path, capsys):
    model_dir, text = tiny
    assert main(["prune", "--model", str(model_dir), "--criterion", "wanda", "--calib", str(text), "--no-dense",
                 "--out", str(tmp_path / "r"), *ARGS]) == 0
    rows = json.loads((tmp_path / "r" / "report.json").read_text())["rows"]
    assert rows[-1]["perplexity"] is not None  # loaded whole: perplexity measured


def test_distributed_outside_torchrun_is_a_one_line_error(tiny, tmp_path, capsys, monkeypatch):
    model_dir, text = tiny
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    rc = main(["prune", "--model", str(model_dir), "--criterion", "wanda", "--calib", str(text), "--distributed",
               "--out", str(tmp_path / "r"), *ARGS])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "torchrun" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # several processes (torch imports): ~10-30 s on 2 shared cores
def test_torchrun_two_ranks_equal_one_process(tiny, tmp_path):
    model_dir, text = tiny
    common = ["prune", "--model", str(model_dir), "--criterion", "wanda", "--calib", str(text), "--no-dense", *ARGS,
              "--offload", "none"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "sparsecraft", *common, "--distributed", "--out", str(tmp_path / "dp")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("true sparsity") == 1  # only rank 0 reports (and writes)
    assert "data parallel   2 ranks, 4 calibration batches" in res.stdout
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(str(tmp_path / "dp" / "model")).state_dict()
    b = AutoModelForCausalLM.from_pretrained(str(tmp_path / "one" / "model")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)  # Wanda: bit-identical to one process
