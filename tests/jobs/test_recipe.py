import pytest
import yaml

from sparsecraft.errors import RecipeError, SparsecraftError
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
    for name, path in builtin_recipes().items():
        job, config = load_recipe(name)
        # the job named by the file's ``job:`` key, with its config validated into the job's own model
        assert job.registry_name == yaml.safe_load(path.read_text())["job"]
        assert type(config) is type(job).Config


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
    acc = {key: r["test_accuracy"] for key, r in rows.items()}
    # magnitude keeps far more than random at 50% (measured 78% vs 36%), and accuracy falls with
    # sparsity (dense 83% > 78% > 34% at 90%): margins of 5+ points, not float noise
    assert acc[("magnitude", 0.5)] > acc[("random", 0.5)] + 0.2
    assert result["dense_test_accuracy"] > acc[("magnitude", 0.5)] > acc[("magnitude", 0.9)]


# --- hostile and careless recipes: one line, at validation time, before anything is written ---

TRAIN = {"job": "train", "data": {"name": "digits"}, "progress": False}
LLM = {"job": "prune-llm", "runs": [{"criterion": "wanda"}]}
SWEEP = {"job": "sparsity-sweep"}


def _with(doc: dict, dotted: str, value) -> dict:
    """``doc`` with ``value`` at a dotted key path (list indices as numbers)."""
    import copy

    doc = copy.deepcopy(doc)
    *parents, last = dotted.split(".")
    node = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    node[int(last) if isinstance(node, list) else last] = value
    return doc


@pytest.mark.parametrize(
    "base, key, value",
    [
        (TINY, "train.epochs", -5), (TINY, "train.epochs", 0), (TINY, "train.lr", 0.0),
        (TINY, "train.lr", float("nan")), (TINY, "train.batch_size", 0), (TINY, "train.weight_decay", -1e-4),
        (TINY, "model.hidden", [16, 0]),
        (TINY, "sweep.saliency_batches", 0), (TINY, "checkpoint.sparsity", 1.5),
        (TINY, "checkpoint.criterion", "size"), (TINY, "seed", -1), (TINY, "seed", 2**40),
        (TINY, "sparsity.overrides", [{"match": "x", "sparsity": -0.1}]),
        (TINY, "sparsity.overrides", [{"match": "x", "pattern": "3:2"}]),
        (TRAIN, "epochs", -5), (TRAIN, "batch_size", 0), (TRAIN, "sparsity", 1.0), (TRAIN, "sparsity", -0.2),
        (TRAIN, "sparsity", float("nan")), (TRAIN, "sparsity", "lots"), (TRAIN, "seed", -3),
        (TRAIN, "threads", 0), (TRAIN, "stop_after", 0), (TRAIN, "checkpoint.every_epochs", -1),
        (TRAIN, "data.limit", 0), (TRAIN, "data.name", "imagenet"), (TRAIN, "model", "cnn"),
        (TRAIN, "optimizer.lr", -0.1), (TRAIN, "optimizer.lr", float("inf")), (TRAIN, "optimizer.momentum", 1.5),
        (TRAIN, "optimizer.weight_decay", -1.0), (TRAIN, "optimizer.name", "lion"),
        (TRAIN, "optimizer.schedule", "linear"), (TRAIN, "soup", {"phases": 0}),
        (TRAIN, "soup", {"ingredients": []}), (TRAIN, "soup", {"ingredients": [{"seed": -1}]}),
        (TRAIN, "soup", {"epochs_per_phase": 0}), (TRAIN, "soup", {"validation": 0}),
        (LLM, "runs", []), (LLM, "runs.0.method", "obs"), (LLM, "runs.0.sparsity", 1.2),
        (LLM, "runs.0.pattern", "5:4"), (LLM, "runs.0.criterion", "size"), (LLM, "runs.0.method", "wanda"),
        (LLM, "runs.0.distribution", {"type": "owl", "m": 0.0}),
        (LLM, "runs.0.distribution", {"type": "owl", "lam": -0.1}),
        (LLM, "data.n_calib", 0), (LLM, "data.seq_len", 1), (LLM, "data.seed", -1), (LLM, "batch_size", 0),
        (LLM, "recovery.lr", 0.0), (LLM, "recovery.loss", "mse"), (LLM, "recovery.steps", -1), (LLM, "threads", 0),
        (SWEEP, "sparsities", []), (SWEEP, "sparsities", [0.5, 1.5]), (SWEEP, "method", "obs"),
        (SWEEP, "distribution", "zipf"), (SWEEP, "criterion", "size"), (SWEEP, "metric", "bleu"),
        (SWEEP, "pattern", "2:1"),
        (SWEEP, "tolerance", -0.1), (SWEEP, "n_eval", 0), (SWEEP, "threads", 0),
    ],
)  # fmt: skip
def test_every_count_size_and_rate_field_has_a_domain(base, key, value):
    with pytest.raises(RecipeError) as e:
        load_recipe(_with(base, key, value))
    assert key.split(".")[0] in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "base, key",
    [
        (TINY, "sparsity.overrides"), (TINY, "sparsity.targets"), (TINY, "sparsity.ignore"),
        (TRAIN, "ignore"), (TRAIN, "method"), (LLM, "targets"), (LLM, "ignore"), (SWEEP, "targets"),
        (SWEEP, "ignore"),
    ],
)  # fmt: skip
def test_regexes_are_compiled_at_validation(base, key):
    bad = "layers.(["
    value = {"name": "rigl", "ignore": [bad]} if key == "method" else [bad]
    if key == "sparsity.overrides":
        value = [{"match": bad, "sparsity": 0.5}]
    with pytest.raises(RecipeError, match=r"invalid regular expression 'layers\.\(\['"):
        load_recipe(_with(base, key, value))


def test_good_values_at_the_edges_of_the_domains_validate():
    load_recipe(_with(_with(TRAIN, "sparsity", 0.0), "optimizer.momentum", 0.0))
    load_recipe(_with(TRAIN, "sparsity", {"type": "constant", "value": 0.5}))
    load_recipe(_with(_with(TINY, "checkpoint.sparsity", 1.0), "sparsity.overrides", [{"match": "^0$"}]))
    load_recipe(_with(LLM, "runs.0", {"criterion": "magnitude"}) | {"data": {"n_calib": 0}})


def test_the_job_must_be_a_name():
    with pytest.raises(RecipeError, match=r"job: must be a job name, got \['train'\]"):
        load_recipe({"job": ["train"]})


def _cli(args, capsys):
    from sparsecraft.cli.main import main

    rc = main(args)
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize(
    "content, match",
    [
        (b"job: digits-sweep\ntrain: {epochs: 2}\ntrain: {epochs: 3}\n", "duplicate key 'train'"),
        (b"job: digits-sweep\nx: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nesting is deeper than"),
        (b"job: digits-sweep\n# caf\xe9\n", "not UTF-8 text"),
        (b"job: digits-sweep\nsparsity: {overrides: [{match: '(', sparsity: 0.5}]}\n", "invalid regular expression"),
        (b"job: digits-sweep\ntrain: {epochs: -5}\n", r"train\.epochs"),
    ],
)
def test_cli_validate_and_run_refuse_in_one_line(tmp_path, capsys, content, match):
    import re

    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(content)
    for args in (["validate", str(recipe)], ["run", str(recipe), "--out", str(tmp_path / "out")]):
        rc, err = _cli(args, capsys)
        assert rc == 2 and re.search(match, err) and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_run_out_an_existing_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    rc, err = _cli(["run", "digits", "--out", str(target)], capsys)
    assert rc == 2 and "exists and is not a folder" in err and err.count("\n") == 1
    assert target.read_text() == "keep me"
    rc, err = _cli(["run", "digits", "--out", str(target / "sub")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_a_finished_run_folder_is_not_overwritten(tmp_path):
    run_dir, _ = run_recipe({**TINY, "train": {"epochs": 1}, "sweep": {"sparsities": [0.5]}}, tmp_path / "run")
    before = (run_dir / "report.json").read_bytes()
    with pytest.raises(SparsecraftError, match="already holds a run"):
        run_recipe(TINY, run_dir)
    assert (run_dir / "report.json").read_bytes() == before
