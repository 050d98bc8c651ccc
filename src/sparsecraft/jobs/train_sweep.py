"""Run a recipe over a grid of sparsities x seeds and tabulate the results for the fitter.

For every (sparsity, seed) the recipe dict gets top-level ``sparsity`` and ``seed`` keys (the
convention every training job follows: ``sparsity`` is the target sparsity), runs through
:func:`sparsecraft.jobs.recipe.run_recipe` into ``OUT/s<sparsity>-seed<seed>/`` and is skipped when
that folder already has a ``report.json`` (so an interrupted sweep resumes). The flattened
reports are written to ``OUT/runs.csv`` (dotted keys such as ``final.test_loss``), the table
``sparsecraft fit`` reads. A grid point interrupted mid-run (a ``checkpoint/`` but no report)
continues with ``resume: true`` when its job can resume. ``jobs > 1`` runs the grid in that many worker processes.

``engine="ray"`` runs every grid point as a Ray Tune trial instead (:mod:`sparsecraft.distributed.ray_tune`,
extra ``[ray]``) with ``resources`` per trial (``{"cpu": 1, "gpu": 0}``) and optional ASHA early stopping
(``asha={"metric": "test_loss", "max_t": epochs}``; the ``train`` job reports every epoch): the same run
folders and the same ``runs.csv`` as the local runner (a run stopped early by ASHA has
``status = stopped`` and its last metrics), so ``sparsecraft fit`` reads either.
"""

from __future__ import annotations

import copy
import importlib
import json
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from sparsecraft.errors import RecipeError, SparsecraftError
from sparsecraft.scaling.io import flatten, write_csv


def run_name(sparsity: float, seed: int) -> str:
    return f"s{sparsity:g}-seed{seed}"


def grid_docs(
    doc: dict[str, Any], sparsities: Sequence[float], seeds: Sequence[int]
) -> list[tuple[float, int, dict[str, Any]]]:
    """The recipe dict for every (sparsity, seed), validated once up front."""
    from sparsecraft.jobs.recipe import JOBS, parse_recipe

    if not sparsities or not seeds:
        raise SparsecraftError("give at least one sparsity and one seed")
    bad = [s for s in sparsities if not 0.0 <= s < 1.0]
    if bad:
        raise SparsecraftError(f"sparsities must be in [0, 1), got {bad}")
    name = doc.get("job")
    if name is None:
        raise RecipeError(f"recipe has no 'job' key; allowed jobs: {', '.join(JOBS.names())}")
    fields = getattr(JOBS.get(name).Config, "model_fields", {})
    missing = [k for k in ("sparsity", "seed") if k not in fields]
    if missing:
        raise RecipeError(
            f"job {name!r} does not accept top-level {' and '.join(repr(m) for m in missing)}; "
            "sweep-train sets 'sparsity' (target sparsity) and 'seed' in the recipe, so use a "
            "training job that has both"
        )
    out = []
    for s in sparsities:
        for seed in seeds:
            d = copy.deepcopy(doc)
            d["sparsity"], d["seed"] = float(s), int(seed)
            out.append((float(s), int(seed), d))
    try:
        parse_recipe(out[0][2])
    except RecipeError as e:
        raise RecipeError(
            f"job {name!r} rejects a numeric top-level 'sparsity'/'seed' ({e}); sweep-train needs "
            "a job whose 'sparsity' is the target sparsity"
        ) from None
    return out


def _run_one(doc: dict[str, Any], run_dir: str, job_module: str | None) -> dict[str, Any]:
    """Worker: run one recipe (importing the module that registered its job first)."""
    if job_module:
        importlib.import_module(job_module)
    from sparsecraft.jobs.recipe import run_recipe

    _, report = run_recipe(doc, run_dir)
    return report


def _row(
    sparsity: float, seed: int, run_dir: Path, status: str, report: dict[str, Any] | None, error: str | None = None
) -> dict[str, Any]:
    row: dict[str, Any] = {"sparsity": sparsity, "seed": seed}
    row.update(flatten(report or {}))
    row.update({"run_dir": str(run_dir), "status": status})
    if error:
        row["error"] = error
    return row


def train_sweep(
    recipe: str | Path | dict[str, Any],
    sparsities: Sequence[float],
    seeds: int | Sequence[int] = 1,
    out: str | Path = "runs/sweep",
    jobs: int = 1,
    progress: bool = True,
    engine: str = "local",
    resources: dict[str, float] | None = None,
    asha: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run the grid (skipping finished runs) and write ``OUT/runs.csv``; returns its rows.

    Failed runs are recorded with ``status = failed`` and their error, and the others go on.
    """
    from tqdm import tqdm

    from sparsecraft.jobs.recipe import JOBS, read_recipe_text

    if engine not in ("local", "ray"):
        raise SparsecraftError(f"unknown engine {engine!r}; allowed: local, ray")
    if engine == "local" and (resources or asha):
        raise SparsecraftError("per-trial resources and ASHA early stopping need engine='ray' (--engine ray)")
    if engine == "ray":
        from sparsecraft.distributed.ray_tune import check_asha, require_ray

        require_ray()
        check_asha(asha)
    doc = recipe if isinstance(recipe, dict) else read_recipe_text(recipe)
    seed_list = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    grid = grid_docs(doc, sparsities, seed_list)
    job_module = JOBS.get(doc["job"]).__module__
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[tuple[float, int], dict[str, Any]] = {}
    todo = []
    resumable = "resume" in getattr(JOBS.get(doc["job"]).Config, "model_fields", {})
    for s, seed, d in grid:
        run_dir = out / run_name(s, seed)
        rep_path = run_dir / "report.json"
        if rep_path.is_file():
            rows[(s, seed)] = _row(s, seed, run_dir, "skipped", _read_report(rep_path))
        else:
            if resumable and (run_dir / "checkpoint").exists():  # interrupted mid-run: continue it
                d = {**d, "resume": True}
            todo.append((s, seed, d, run_dir))
    bar = tqdm(total=len(grid), initial=len(grid) - len(todo), desc="sweep-train", unit="run", disable=not progress)

    def finish(s: float, seed: int, run_dir: Path, report: dict | None, err: str | None) -> None:
        rows[(s, seed)] = _row(s, seed, run_dir, "failed" if err else "done", report, err)
        write_csv(out / "runs.csv", [rows[k] for k in sorted(rows)])
        bar.update(1)

    if engine == "ray":
        from sparsecraft.distributed.ray_tune import run_trials

        res = resources or {}
        points = [{"sparsity": s, "seed": seed, "doc": d, "run_dir": str(rd.resolve()), "job_module": job_module}
                  for s, seed, d, rd in todo]
        for o in run_trials(points, ray_trial, out / "ray", cpus_per_trial=float(res.get("cpu", 1)),
                            gpus_per_trial=float(res.get("gpu", 0)), asha=asha,
                            max_concurrent=jobs if jobs > 1 else None):
            s, seed, rd = o.point["sparsity"], o.point["seed"], Path(o.point["run_dir"])
            if o.status == "done" and (rd / "report.json").is_file():
                finish(s, seed, rd, _read_report(rd / "report.json"), None)
            elif o.status == "stopped":
                rows[(s, seed)] = _row(s, seed, rd, "stopped", {"final": _last(o.metrics)})
                write_csv(out / "runs.csv", [rows[k] for k in sorted(rows)])
                bar.update(1)
            else:
                finish(s, seed, rd, None, o.error or "trial ended without a report")
    elif jobs <= 1:
        for s, seed, d, run_dir in todo:
            try:
                finish(s, seed, run_dir, _run_one(d, str(run_dir), None), None)
            except Exception as e:  # noqa: BLE001 -- one bad run must not stop the sweep
                finish(s, seed, run_dir, None, _describe(e))
    else:
        with ProcessPoolExecutor(max_workers=int(jobs)) as pool:
            futures = {pool.submit(_run_one, d, str(rd), job_module): (s, seed, rd) for s, seed, d, rd in todo}
            for fut in as_completed(futures):
                s, seed, rd = futures[fut]
                try:
                    finish(s, seed, rd, fut.result(), None)
                except Exception as e:  # noqa: BLE001
                    finish(s, seed, rd, None, _describe(e))
    bar.close()
    table = [rows[k] for k in sorted(rows)]
    write_csv(out / "runs.csv", table)
    return table


def ray_trial(point: dict[str, Any], report: Any) -> None:
    """One grid point as a Ray Tune trial: run its recipe (the ``train`` job reports every
    epoch's curve entry, for ASHA); the run folder and report are the local runner's."""
    from sparsecraft.jobs import train

    hook = lambda entry: report({k: v for k, v in entry.items() if isinstance(v, (int, float))})  # noqa: E731
    train.EPOCH_HOOKS.append(hook)
    try:
        _run_one(point["doc"], point["run_dir"], point["job_module"])
    finally:
        train.EPOCH_HOOKS.remove(hook)


def _last(metrics: dict[str, Any]) -> dict[str, Any]:
    """The curve entry a stopped trial reported last (Ray's bookkeeping keys dropped)."""
    keep = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "sparsity", "lr")
    return {k: metrics[k] for k in keep if k in metrics}


def _read_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SparsecraftError(f"{path} is not a readable report ({e}); delete it to rerun that grid point") from None
    if not isinstance(report, dict):
        raise SparsecraftError(f"{path} is not a report (a JSON object); delete it to rerun that grid point")
    return report


def _describe(e: BaseException) -> str:
    if isinstance(e, SparsecraftError):
        return str(e)
    return "".join(traceback.format_exception_only(type(e), e)).strip()
