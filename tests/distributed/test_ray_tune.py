"""Sweeps on Ray Tune: the same run folders and runs.csv as the local runner (so ``sparsecraft fit``
reads either), per-trial resources, ASHA early stopping. A local Ray with 2 CPUs is started."""

import csv

import pytest

from sparsecraft.distributed.ray_tune import check_asha
from sparsecraft.errors import SparsecraftError
from sparsecraft.jobs.train_sweep import train_sweep
from sparsecraft.scaling.io import load_table

RECIPE = {"job": "train", "model": "mlp", "data": {"name": "digits", "limit": 300}, "method": "set", "epochs": 3,
          "batch_size": 64, "threads": 1, "progress": False, "optimizer": {"lr": 0.05}}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is the optional extra sparsecraft[ray]")
    pytest.importorskip("ray.tune", reason="Ray Tune is part of sparsecraft[ray]")
    import os
    import sys

    # the CI machine is shared: Ray's memory monitor would kill trials when *other* processes fill RAM
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    yield ray
    ray.shutdown()


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # a local Ray cluster and its workers: ~10-35 s on 2 shared cores
def test_ray_engine_writes_what_the_local_runner_writes(ray_local, tmp_path):
    local = train_sweep(RECIPE, [0.5, 0.8], [0], tmp_path / "local", progress=False)
    on_ray = train_sweep(RECIPE, [0.5, 0.8], [0], tmp_path / "ray", progress=False, engine="ray",
                         resources={"cpu": 1})
    assert [r["status"] for r in on_ray] == ["done", "done"], on_ray
    a, b = _rows(tmp_path / "local" / "runs.csv"), _rows(tmp_path / "ray" / "runs.csv")
    assert a[0].keys() == b[0].keys()
    for ra, rb in zip(a, b):  # the train job is deterministic (seeded batches, 1 thread): same numbers
        assert ra["final.test_loss"] == rb["final.test_loss"] and ra["final.density"] == rb["final.density"]
    for s in ("s0.5-seed0", "s0.8-seed0"):
        assert sorted(p.name for p in (tmp_path / "ray" / s).iterdir()) == \
            sorted(p.name for p in (tmp_path / "local" / s).iterdir())
    table = load_table(tmp_path / "ray" / "runs.csv", "final.density", "final.test_loss")
    assert len(table.y) == 2 and len(local) == 2
    # resumable like the local runner: finished grid points are skipped
    again = train_sweep(RECIPE, [0.5, 0.8], [0], tmp_path / "ray", progress=False, engine="ray")
    assert [r["status"] for r in again] == ["skipped", "skipped"]


@pytest.mark.slow  # a local Ray cluster and its workers: ~10-35 s on 2 shared cores
def test_ray_asha_stops_or_finishes_every_trial(ray_local, tmp_path):
    rows = train_sweep(RECIPE, [0.3, 0.6, 0.9, 0.97], [0], tmp_path / "asha", progress=False, engine="ray",
                       asha={"metric": "test_loss", "max_t": 3, "grace_period": 1, "reduction_factor": 2})
    statuses = [r["status"] for r in rows]
    assert set(statuses) <= {"done", "stopped"} and "done" in statuses, rows
    for r in rows:
        if r["status"] == "stopped":  # its last reported epoch is recorded, before the end
            assert 1 <= float(r["final.epoch"]) < 3


def test_bad_engine_settings_are_one_line_errors(tmp_path):
    with pytest.raises(SparsecraftError, match="unknown engine"):
        train_sweep(RECIPE, [0.5], [0], tmp_path, engine="dask")
    with pytest.raises(SparsecraftError, match="need engine='ray'"):
        train_sweep(RECIPE, [0.5], [0], tmp_path, asha={"max_t": 3})
    with pytest.raises(SparsecraftError, match="max_t"):
        check_asha({"metric": "test_loss"})
    with pytest.raises(SparsecraftError, match="unknown ASHA setting"):
        check_asha({"max_t": 3, "patience": 2})


@pytest.mark.slow  # a local Ray cluster and its workers: ~10-35 s on 2 shared cores
def test_cli_engine_ray(ray_local, tmp_path, capsys):
    import yaml

    from sparsecraft.cli.main import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "epochs": 2}))
    out = tmp_path / "sweep"
    assert main(["sweep-train", str(recipe), "--sparsity", "0.5", "--engine", "ray", "--cpus-per-trial", "1",
                 "--asha", "--out", str(out)]) == 0
    assert "1 runs: 1 trained" in capsys.readouterr().out
    assert (out / "s0.5-seed0" / "report.json").is_file() and (out / "runs.csv").is_file()


def test_cli_asha_without_ray_engine_is_refused(tmp_path, capsys):
    from sparsecraft.cli.main import main

    assert main(["sweep-train", "digits", "--sparsity", "0.5", "--asha", "--max-t", "2", "--out", str(tmp_path)]) == 2
    assert "--asha needs --engine ray" in capsys.readouterr().err
