import pytest

from sparsecraft.errors import RecipeError
from sparsecraft.jobs.recipe import builtin_recipes, load_recipe, run_recipe

TINY = {
    "job": "digits-sweep",
    "train": {"epochs": 2},
    "model": {"hidden": [16]},
    "sweep": {"sparsities": [0.5, 0.9], "criteria": ["magnitude", "random"]},
    "checkpoint": {"criterion": "magnitude", "sparsity": 0.5},
}


def test_builtin_recipes_validate():
    assert "digits" in builtin_recipes()
    for name in builtin_recipes():
        job, _ = load_recipe(name)
        assert job is not None


def test_unknown_key_names_the_key_path():
    with pytest.raises(RecipeError, match=r"train\.epochz: unknown key"):
        load_recipe({**TINY, "train": {"epochz": 3}})


def test_wrong_type_names_the_key_path():
    with pytest.raises(RecipeError, match=r"train\.epochs"):
        load_recipe({**TINY, "train": {"epochs": "many"}})


def test_unknown_registry_name_lists_allowed_values():
    with pytest.raises(RecipeError, match=r"sparsity\.criterion: unknown criterion 'size'; allowed: gradient"):
        load_recipe({**TINY, "sparsity": {"criterion": "size"}})
    with pytest.raises(RecipeError, match=r"sparsity\.pattern: unknown pattern 'diag'; allowed: block"):
        load_recipe({**TINY, "sparsity": {"pattern": "diag"}})
    with pytest.raises(RecipeError, match=r"sweep\.criteria: unknown criterion 'x'"):
        load_recipe({**TINY, "sweep": {"criteria": ["x"]}})


def test_unknown_job_and_missing_job():
    with pytest.raises(RecipeError, match="unknown job 'cook'; allowed: .*digits-sweep"):
        load_recipe({"job": "cook"})
    with pytest.raises(RecipeError, match="no 'job' key"):
        load_recipe({"train": {}})


def test_recipe_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="neither a file nor a built-in"):
        load_recipe(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(str(bad))


def test_digits_job_runs_and_writes_outputs(tmp_path):
    run_dir, result = run_recipe(TINY, tmp_path / "run")
    assert {p.name for p in run_dir.iterdir()} >= {
        "report.json",
        "table.md",
        "dense.safetensors",
        "pruned.safetensors",
        "recipe.yaml",
    }
    rows = {(r["criterion"], r["sparsity"]): r for r in result["rows"]}
    assert rows[("magnitude", 0.9)]["true_sparsity"] == pytest.approx(0.9, abs=2e-3)
    assert 0.0 <= rows[("random", 0.5)]["test_accuracy"] <= 1.0
