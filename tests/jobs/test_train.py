"""The ``train`` job and ``sparsecraft train``: report keys, plots, bit-exact --resume."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sparsecraft.cli.main import main
from sparsecraft.errors import RecipeError
from sparsecraft.jobs.recipe import run_recipe

RECIPE = {"job": "train", "model": "mlp", "data": "digits", "method": {"name": "rigl", "update": {"every": 5}},
          "sparsity": 0.8, "seed": 1, "epochs": 3, "batch_size": 64, "progress": False}  # fmt: skip


def test_report_plots_and_table(tmp_path):
    run_dir, rep = run_recipe(dict(RECIPE), tmp_path / "a")
    assert rep["method"] == "rigl" and rep["sparsity"] == 0.8 and rep["seed"] == 1
    f = rep["final"]
    assert set(f) >= {"test_accuracy", "test_loss", "density", "params", "nonzero_params"}
    assert f["density"] == pytest.approx(0.2, abs=0.01) and f["test_accuracy"] > 0.5
    assert len(rep["curves"]) == 3 and rep["mask_dynamics"]["updates"] > 0
    for name in ("curves.png", "sparsity.png", "layers.md", "report.json", "checkpoint/model.safetensors"):
        assert (run_dir / name).is_file()
    assert json.loads((run_dir / "report.json").read_text())["final"] == f


def test_resume_equals_uninterrupted(tmp_path):
    full_dir, full = run_recipe(dict(RECIPE), tmp_path / "full")
    part_dir, part = run_recipe({**RECIPE, "stop_after": 1}, tmp_path / "part")
    assert part["final"] is None and part["stopped_after_epoch"] == 1
    assert main(["train", str(_write(tmp_path, RECIPE)), "--out", str(part_dir), "--resume", "--json"]) == 0
    a = load_file(str(full_dir / "checkpoint/model.safetensors"))
    b = load_file(str(part_dir / "checkpoint/model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    resumed = json.loads((part_dir / "report.json").read_text())
    assert resumed["final"] == full["final"] and resumed["curves"] == full["curves"]


def test_dense_and_errors(tmp_path, capsys):
    _, rep = run_recipe({**RECIPE, "method": "dense", "epochs": 1}, tmp_path / "d")
    assert rep["method"] == "dense" and rep["final"]["density"] == 1.0
    with pytest.raises(RecipeError, match="unknown method"):
        run_recipe({**RECIPE, "method": {"name": "nope"}}, tmp_path / "e")
    with pytest.raises(RecipeError, match="top level"):
        run_recipe({**RECIPE, "method": {"name": "rigl", "sparsity": 0.5}}, tmp_path / "f")
    assert main(["train", str(_write(tmp_path, RECIPE)), "--resume"]) == 2
    assert "--out" in capsys.readouterr().err


def _write(tmp_path: Path, doc: dict) -> Path:
    import yaml

    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_sparse_model_soups_from_a_recipe(tmp_path):
    soup = {"phases": 2, "ingredients": [{"seed": 1}, {"seed": 2, "weight_decay": 1e-3}], "mode": "greedy",
            "epochs_per_phase": 1, "validation": 200}  # fmt: skip
    _, rep = run_recipe({**RECIPE, "method": "dense", "epochs": 1, "soup": soup}, tmp_path / "s")
    assert rep["method"] == "sparse-model-soups" and rep["final"]["density"] == pytest.approx(0.2, abs=0.01)
    assert [h["sparsity"] for h in rep["soup"]] == pytest.approx([1 - 0.2**0.5, 0.8])
    with pytest.raises(RecipeError, match="soup"):
        run_recipe({**RECIPE, "soup": soup}, tmp_path / "t")
