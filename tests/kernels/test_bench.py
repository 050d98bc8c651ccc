"""bench_model and the 'sparsecraft bench' command on a tiny checkpointed MLP."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import sparsecraft
from sparsecraft.cli.cmd_bench import mlp_from_state
from sparsecraft.cli.main import main
from sparsecraft.errors import SparsecraftError
from sparsecraft.kernels.bench import bench_model, capture_linear_inputs


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8, bias=False))
    sparsecraft.prune(model, 0.8)
    return model


def test_capture_linear_inputs():
    model = _mlp()
    x = torch.randn(3, 16)
    acts = capture_linear_inputs(model, x)
    assert set(acts) == {"0", "2"}
    assert torch.equal(acts["0"], x) and acts["2"].shape == (3, 32)


def test_bench_model_with_injected_measure():
    model = _mlp()

    def measure(weight, batch, names):
        assert batch == 4
        return {n: (0.1 if n == "torch-csr" else 1.0) for n in names}

    res = bench_model(model, torch.randn(4, 16), measure=measure, repeats=3)
    assert [r["backend"] for r in res.layers] == ["torch-csr", "torch-csr"]
    assert res.max_abs_diff < 1e-5 and res.dense_ms > 0 and res.sparse_ms > 0
    assert isinstance(model[0], nn.Linear)  # the original model is left alone
    d = res.to_dict()
    assert d["end_to_end"]["speedup"] == pytest.approx(res.speedup)
    assert "end to end" in res.table()


def test_mlp_from_state_infers_layers():
    sd = _mlp().state_dict()
    model = mlp_from_state(sd)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]
    assert model[2].bias is None and model[0].in_features == 16
    with pytest.raises(SparsecraftError, match="--builder"):
        mlp_from_state({"encoder.weight": torch.zeros(2, 2)})


def test_cli_bench_json(tmp_path, capsys):
    path = tmp_path / "mlp.safetensors"
    sparsecraft.save(_mlp(), path)
    args = ["--backend", "torch-csr", "--repeats", "2", "--batch-size", "2", "--json"]
    assert main(["bench", "--model", str(path), *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [x["backend"] for x in out["layers"]] == ["torch-csr", "torch-csr"]
    assert out["end_to_end"]["max_abs_diff"] < 1e-5
    assert main(["bench", "--model", str(path), "--backend", "dense", "--repeats", "2"]) == 0
    assert "end to end" in capsys.readouterr().out


def test_cli_bench_bad_model(tmp_path, capsys):
    assert main(["bench", "--model", str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
