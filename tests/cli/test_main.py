"""The command line end to end, in subprocesses (as a user runs it)."""

import json
import subprocess
import sys

import pytest
import yaml

from tests.jobs.test_recipe import TINY


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "sparsecraft.cli.main", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    recipe = d / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    out = d / "run"
    res = cli("run", str(recipe), "--out", str(out))
    assert res.returncode == 0, res.stderr
    return d, out, res


def test_run_prints_table_and_run_folder(tiny_run):
    _, out, res = tiny_run
    assert "| sparsity | magnitude | random |" in res.stdout
    assert f"run folder: {out}" in res.stdout


def test_inspect_json_shows_true_per_layer_sparsity(tiny_run):
    _, out, _ = tiny_run
    res = cli("inspect", str(out / "pruned.safetensors"), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    names = [l["name"] for l in info["layers"]]
    assert names == ["0.weight", "2.weight"]
    assert all(abs(l["sparsity"] - 0.5) < 0.01 and l["zeros_match_mask"] for l in info["layers"])


def test_validate_ok_and_bad(tiny_run, tmp_path):
    d, _, _ = tiny_run
    ok = cli("validate", str(d / "tiny.yaml"))
    assert ok.returncode == 0 and "valid 'digits-sweep' recipe" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "sweep": {"sparsities": [1.5]}}))
    res = cli("validate", str(bad))
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and "sweep.sparsities" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_list_json_has_every_axis():
    res = cli("list", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    for axis in ("patterns", "criteria", "distributions", "schedules", "jobs"):
        assert data[axis], axis
    assert "erk" in [e["name"] for e in data["distributions"]]


def test_inspect_missing_file_is_a_one_line_error(tmp_path):
    res = cli("inspect", str(tmp_path / "nope.safetensors"))
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_every_command_has_help(capsys):
    from sparsecraft.cli.main import COMMANDS, main

    res = cli("--help")  # once through a real process
    assert res.returncode == 0 and "usage: sparsecraft" in res.stdout
    names = COMMANDS.names()
    assert {"run", "inspect", "validate", "list"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert f"usage: sparsecraft {name}" in capsys.readouterr().out
