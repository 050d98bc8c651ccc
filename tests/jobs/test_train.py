"""The ``train`` job and ``sparsecraft train``: report keys, plots, bit-exact --resume."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sparsecraft.cli.main import main
from sparsecraft.errors import RecipeError, SparsecraftError
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


# --- resume: only a matching, intact pair continues; the report shows what ran ---

QUICK = {**RECIPE, "data": {"name": "digits", "limit": 256}, "epochs": 2, "stop_after": 1}


def _stopped(tmp_path: Path, name: str = "run", **change) -> Path:
    run_dir, rep = run_recipe({**QUICK, **change}, tmp_path / name)
    assert rep["stopped_after_epoch"] == 1
    return run_dir


@pytest.mark.parametrize(
    "change, named",
    [({"sparsity": 0.5}, "sparsity (0.8 -> 0.5)"), ({"epochs": 3}, "epochs (2 -> 3)"), ({"seed": 2}, "seed"),
     ({"method": "dense"}, "method.name ('rigl' -> 'dense')"), ({"optimizer": {"lr": 0.05}}, "optimizer.lr")],
)  # fmt: skip
def test_resume_with_changed_settings_is_refused_naming_them(tmp_path, change, named):
    run_dir = _stopped(tmp_path)
    before = (run_dir / "report.json").read_bytes()
    with pytest.raises(SparsecraftError, match="differs from the run saved") as e:
        run_recipe({**QUICK, **change, "resume": True}, run_dir)
    assert named in str(e.value)
    assert (run_dir / "report.json").read_bytes() == before  # nothing rewritten


def test_resume_report_shows_what_ran(tmp_path):
    run_dir = _stopped(tmp_path)
    allowed = {"progress": True, "threads": 1, "stop_after": None, "checkpoint": {"every_epochs": 0}}
    _, rep = run_recipe({**QUICK, **allowed, "resume": True}, run_dir)
    assert rep["resumed_from_epoch"] == 1 and rep["sparsity"] == 0.8 and len(rep["curves"]) == 2
    assert json.loads((run_dir / "report.json").read_text())["resumed_from_epoch"] == 1


def test_fresh_run_over_a_checkpoint_is_refused(tmp_path):
    run_dir = _stopped(tmp_path)
    (run_dir / "report.json").unlink()  # as after a crash: checkpoint, no report
    with pytest.raises(SparsecraftError, match="holds the checkpoint of an earlier run"):
        run_recipe(dict(QUICK), run_dir)


def test_cli_resume_refuses_a_mismatched_or_corrupted_pair(tmp_path, capsys):
    run_dir, other = _stopped(tmp_path, "a"), _stopped(tmp_path, "b", seed=5)
    recipe = _write(tmp_path, {**QUICK, "stop_after": None})
    ckpt = run_dir / "checkpoint"
    good_model = (ckpt / "model.safetensors").read_bytes()
    # a different save's model next to this state (what a crash between the two files left)
    (ckpt / "model.safetensors").write_bytes((other / "checkpoint" / "model.safetensors").read_bytes())
    assert main(["train", str(recipe), "--out", str(run_dir), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "mismatched pair" in err and err.count("\n") == 1
    # a flipped byte in the state file
    (ckpt / "model.safetensors").write_bytes(good_model)
    state = bytearray((ckpt / "state.safetensors").read_bytes())
    state[-2] ^= 0x40
    (ckpt / "state.safetensors").write_bytes(bytes(state))
    assert main(["train", str(recipe), "--out", str(run_dir), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "corrupted" in err and err.count("\n") == 1
