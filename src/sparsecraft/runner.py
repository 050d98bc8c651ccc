"""Run a recipe: make the run folder, run the job, write ``report.json`` and the recipe used."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from sparsecraft.recipe import load_recipe, read_recipe_text


def make_run_dir(job_name: str, requested: str | Path | None) -> Path:
    """``requested`` or ``runs/<job>-<YYYYmmdd-HHMMSS>`` (suffixed if it exists)."""
    if requested:
        path = Path(requested)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{job_name}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path("runs") / f"{job_name}-{stamp}-{n}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def run_recipe(source: str | Path | dict[str, Any], out_dir: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Validate and run a recipe; returns (run folder, report dict)."""
    doc = source if isinstance(source, dict) else read_recipe_text(source)
    job, config = load_recipe(doc)
    name = job.registry_name  # type: ignore[attr-defined]
    requested = out_dir or getattr(getattr(config, "output", None), "dir", None)
    run_dir = make_run_dir(name, requested)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    t0 = time.perf_counter()
    result = job.run(config, run_dir)
    result = {"job": name, "wall_time_s": round(time.perf_counter() - t0, 3), **result}
    write_json(run_dir / "report.json", result)
    return run_dir, result
