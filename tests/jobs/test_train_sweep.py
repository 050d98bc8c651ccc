"""sweep-train: grid of (sparsity, seed) runs, resumable, parallel, fit-ready runs.csv."""

import json
from pathlib import Path

import pytest

from sparsecraft.errors import RecipeError, SparsecraftError
from sparsecraft.jobs.recipe import JOBS, Job, OutputConfig, Strict
from sparsecraft.jobs.train_sweep import train_sweep
from sparsecraft.scaling.io import load_table


class TinyConfig(Strict):
    sparsity: float = 0.0
    seed: int = 0
    scale: float = 1.0
    fail_at: float | None = None
    output: OutputConfig = OutputConfig()


if "scaling-test-tiny" not in JOBS:

    @JOBS.register("scaling-test-tiny")
    class TinyJob(Job):
        """A job that returns a loss that is a known function of density, instantly."""

        Config = TinyConfig

        def run(self, config: TinyConfig, run_dir: Path) -> dict:
            if config.fail_at is not None and abs(config.sparsity - config.fail_at) < 1e-12:
                raise RuntimeError("planned failure")
            density = 1 - config.sparsity
            loss = config.scale * (0.3 + 0.2 * density**-0.5) * (1 + 0.001 * config.seed)
            (run_dir / "marker.txt").write_text("ran")
            return {"sparsity": config.sparsity, "seed": config.seed, "final": {"density": density, "test_loss": loss}}


RECIPE = {"job": "scaling-test-tiny", "scale": 2.0}


def test_grid_resume_and_table(tmp_path):
    out = tmp_path / "sweep"
    rows = train_sweep(RECIPE, [0.5, 0.75, 0.9, 0.95], 2, out, progress=False)
    assert len(rows) == 8 and all(r["status"] == "done" for r in rows)
    assert (out / "s0.75-seed1" / "report.json").is_file()
    rep = json.loads((out / "s0.9-seed0" / "report.json").read_text())
    assert rep["sparsity"] == 0.9 and rep["seed"] == 0
    table = load_table(out / "runs.csv", "final.density", "final.test_loss")
    assert len(table.y) == 8
    # resumable: finished runs are skipped, a new sparsity is trained
    (out / "s0.5-seed0" / "marker.txt").unlink()
    rows = train_sweep(RECIPE, [0.5, 0.75, 0.9, 0.95, 0.98], 2, out, progress=False)
    assert sum(r["status"] == "skipped" for r in rows) == 8
    assert sum(r["status"] == "done" for r in rows) == 2
    assert not (out / "s0.5-seed0" / "marker.txt").exists()
    assert len(load_table(out, "final.density", "final.test_loss").y) == 10


def test_parallel_jobs_and_failures(tmp_path):
    recipe = {**RECIPE, "fail_at": 0.9}
    rows = train_sweep(recipe, [0.5, 0.9], [0, 3], tmp_path / "p", jobs=2, progress=False)
    status = {(r["sparsity"], r["seed"]): r["status"] for r in rows}
    assert status == {(0.5, 0): "done", (0.5, 3): "done", (0.9, 0): "failed", (0.9, 3): "failed"}
    assert "planned failure" in next(r for r in rows if r["status"] == "failed")["error"]


def test_job_without_sparsity_or_seed_is_rejected(tmp_path):
    with pytest.raises(RecipeError, match="does not accept top-level 'sparsity'|rejects a numeric"):
        train_sweep({"job": "digits-sweep"}, [0.5], 1, tmp_path, progress=False)
    with pytest.raises(SparsecraftError, match="sparsities must be in"):
        train_sweep(RECIPE, [1.5], 1, tmp_path, progress=False)


def test_an_interrupted_training_point_resumes_and_a_broken_report_is_named(tmp_path):
    recipe = {"job": "train", "model": "mlp", "data": {"name": "digits", "limit": 256}, "method": "static",
              "epochs": 2, "batch_size": 64, "progress": False}  # fmt: skip
    out = tmp_path / "sw"
    train_sweep({**recipe, "stop_after": 1}, [0.5], 1, out, progress=False)
    (out / "s0.5-seed0" / "report.json").unlink()  # as if killed after the epoch-1 checkpoint
    rows = train_sweep(recipe, [0.5], 1, out, progress=False)
    assert rows[0]["status"] == "done" and rows[0]["resumed_from_epoch"] == 1
    (out / "s0.5-seed0" / "report.json").write_text('{"final": ')
    with pytest.raises(SparsecraftError, match=r"report\.json is not a readable report"):
        train_sweep(recipe, [0.5], 1, out, progress=False)
