import json
import os
import subprocess
import sys

import pytest
import torch

import sparsecraft
from sparsecraft.cli.main import main
from sparsecraft.data.text import build_protocol
from sparsecraft.evaluation.perplexity import perplexity

from .tiny_hf import make_tiny_hf

ARGS = ["--n-calib", "4", "--n-eval", "2", "--seq-len", "32", "--batch-size", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_hf(tmp_path_factory.mktemp("tiny"))


def test_prune_cli_in_process(tiny, tmp_path, capsys):
    model_dir, text = tiny
    out = tmp_path / "run"
    rc = main(["prune", "--model", str(model_dir), "--criterion", "wanda", "--pattern", "2:4",
               "--calib", str(text), "--out", str(out), *ARGS])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "true sparsity   0.5000" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["job"] == "prune-llm"
    dense, pruned = report["rows"]
    assert dense["method"] == "dense" and pruned["true_sparsity"] == pytest.approx(0.5)
    # the HF copy loads with from_pretrained and keeps the N:M zeros
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    # the reported perplexities are those of the dense model and of the saved pruned copy on the
    # protocol's evaluation windows, recomputed here
    proto = build_protocol(AutoTokenizer.from_pretrained(str(model_dir)), str(text), n_calib=4, n_eval=2, seq_len=32)
    dense_model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    assert dense["perplexity"] == pytest.approx(perplexity(dense_model, proto.eval, 2, progress=False), rel=1e-5)
    assert pruned["perplexity"] == pytest.approx(perplexity(hf, proto.eval, 2, progress=False), rel=1e-5)
    w = hf.model.layers[0].mlp.up_proj.weight
    assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all()
    # the sparse checkpoint loads into a fresh model with its masks
    fresh = AutoModelForCausalLM.from_pretrained(str(model_dir))
    sparsecraft.load(fresh, out / "sparse.safetensors")
    assert torch.equal(fresh.model.layers[0].mlp.up_proj.weight, w)
    assert sparsecraft.report(fresh).layer("model.layers.0.mlp.up_proj.weight").pattern == "2:4"
    assert "2:4" in (out / "sparsity.md").read_text()


def test_prune_cli_user_error(tiny, tmp_path, capsys):
    model_dir, text = tiny
    rc = main(["prune", "--model", str(tmp_path / "nope"), "--calib", str(text), "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "neither a built-in name" in capsys.readouterr().err


@pytest.mark.slow
def test_prune_cli_subprocess_json(tiny, tmp_path):
    model_dir, text = tiny
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sparsecraft.cli.main", "prune", "--model", str(model_dir), "--method",
           "sparsegpt", "--sparsity", "0.5", "--calib", str(text), "--eval", str(text), "--out", str(out),
           "--json", *ARGS]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["rows"][1]["method"] == "sparsegpt"
    assert doc["rows"][1]["true_sparsity"] == pytest.approx(0.5)
    assert (out / "model" / "config.json").is_file()


def test_prune_cli_owl_and_recovery(tiny, tmp_path, capsys):
    model_dir, text = tiny
    out = tmp_path / "run"
    rc = main(["prune", "--model", str(model_dir), "--criterion", "wanda", "--sparsity", "0.6",
               "--distribution", '{"type": "owl", "lam": 0.05}', "--recover-steps", "3", "--recover-lr", "1e-3",
               "--recover-loss", "lm+squarehead", "--recover-feature-weight", "0.5", "--recover-kd-weight", "0.2",
               "--calib", str(text),
               "--out", str(out), "--no-save", "--json", *ARGS])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    row = doc["rows"][1]
    assert row["criterion"] == "wanda" and row["distribution"] == "owl" and row["config"] == "wanda+owl 60%"
    assert len(row["owl_ratios"]) == 2
    assert sum(row["block_sparsities"]) / 2 == pytest.approx(0.6)
    assert row["recovery"]["loss"] == "lm+squarehead" and "perplexity_pruned" in row
    assert set(row["recovery"]["first_parts"]) == {"task", "feature", "kd"}
    assert not (out / "model").exists()


def test_per_run_save_flag_and_inspect_json(tiny, tmp_path, capsys):
    """The flagship recipe shape: several runs, only the one marked ``save`` writes a model,
    and ``sparsecraft inspect --json`` reads the true per-layer sparsity from its checkpoint."""
    from sparsecraft.jobs.recipe import run_recipe

    model_dir, text = tiny
    recipe = {
        "job": "prune-llm", "model": str(model_dir), "save": False, "plot": False, "progress": False,
        "data": {"calib": str(text), "n_calib": 4, "n_eval": 2, "seq_len": 32},
        "runs": [{"criterion": "magnitude", "sparsity": 0.5}, {"criterion": "wanda", "pattern": "2:4", "save": True}],
    }
    run_dir, _ = run_recipe(recipe, tmp_path / "run")
    saved = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    assert saved == ["01-wanda-2of4"]
    assert main(["inspect", str(run_dir / "01-wanda-2of4" / "sparse.safetensors"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers"] and all(l["pattern"] == "2:4" and l["sparsity"] == 0.5 for l in info["layers"])


def test_prune_cli_structure_removal_saves_a_smaller_model(tiny, tmp_path, capsys):
    model_dir, text = tiny
    out = tmp_path / "run"
    rc = main(["prune", "--model", str(model_dir), "--method", "depth", "--sparsity", "0", "--option", "blocks=1",
               "--recover-steps", "2", "--recover-loss", "lm", "--calib", str(text), "--out", str(out), *ARGS])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "parameters      " in printed and "fewer" in printed and "sparse.safetensors" not in printed
    report = json.loads((out / "report.json").read_text())
    dense, pruned = report["rows"]
    assert pruned["params"] < dense["params"] and pruned["structure"]["blocks_removed"] in ([0], [1])
    assert pruned["recovery"]["steps"] == 2 and "parameters (M)" in (out / "table.md").read_text()
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(out / "model"))  # a plain config: one block fewer
    assert hf.config.num_hidden_layers == 1 and not (out / "sparse.safetensors").exists()


def test_prune_cli_slicegpt_and_refused_squarehead(tiny, tmp_path, capsys):
    model_dir, text = tiny
    rc = main(["prune", "--model", str(model_dir), "--method", "slicegpt", "--sparsity", "0.25", "--no-save",
               "--recover-steps", "2", "--calib", str(text), "--out", str(tmp_path / "bad"), *ARGS])
    assert rc == 2 and "SquareHead compares block outputs" in capsys.readouterr().err
    out = tmp_path / "run"
    rc = main(["prune", "--model", str(model_dir), "--method", "slicegpt", "--sparsity", "0.25", "--option",
               "embeddings=slice", "--calib", str(text), "--out", str(out), "--json", *ARGS])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    st = doc["rows"][1]["structure"]
    assert st["width"] == 24 and st["embeddings"] == "slice"
    from sparsecraft.models import load_model

    model = load_model(out / "model").model  # the sliced layers come back
    assert model.model.layers[0].attn_shortcut.weight.shape == (24, 24)
    assert main(["prune", "--model", str(model_dir), "--method", "depth", "--option", "blocks"]) == 2
    assert "give KEY=VALUE" in capsys.readouterr().err
