"""Recipes: a YAML document that declares a whole run, mapping one-to-one to the Python API.

A recipe names a ``job`` (a registered :class:`Job`) and gives that job's fields; every job
declares its fields as a pydantic model with ``extra="forbid"``, so unknown keys, wrong types and
unknown registry names are rejected with a message naming the key path and the allowed values::

    job: digits-sweep
    train: {epochs: 30}
    sweep:
      sparsities: [0.5, 0.8, 0.9]
      criteria: [magnitude, random]
    output: {dir: runs/digits}

A new job is one module in ``sparsecraft/jobs/`` with a ``@JOBS.register("name")`` class; ``JOBS``
discovers the package's modules on first lookup, no edit here. Built-in recipes live in
``sparsecraft/recipes/*.yaml`` and can be named without a path (``sparsecraft run digits``).
"""

from __future__ import annotations

import json
import re
import reprlib
import time
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from sparsecraft import atomic
from sparsecraft.errors import RecipeError, SparsecraftError
from sparsecraft.jobs.strict_yaml import MAX_BYTES, check_plain_data, load_yaml
from sparsecraft.registry import Registry

JOBS: Registry[type[Job]] = Registry("job", package="sparsecraft.jobs")
BUILTIN_DIR = Path(__file__).parent.parent / "recipes"


class Strict(BaseModel):
    """Base of every recipe section: unknown keys are errors, and so are NaN / infinite floats
    (every rate, size and fraction field also declares its range)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class OutputConfig(Strict):
    dir: str | None = None  #: run folder; default runs/<job>-<timestamp>


def registry_name_validator(registry: Registry, field: str):
    """A pydantic validator that checks a string is a name in ``registry``."""

    def check(cls, v):  # noqa: ANN001
        if isinstance(v, str) and v.lower() not in registry:
            raise ValueError(f"unknown {registry.kind} {v!r}; allowed: {', '.join(registry.names())}")
        return v

    return field_validator(field)(check)


def check_regex_list(value: Any) -> Any:
    """Compile every regex of a list (``targets``, ``ignore``, ...) so that a bad one is a
    validation error naming it, not a crash in the middle of a run."""
    for item in value or []:
        check_regex(item)
    return value


def check_regex(value: Any) -> Any:
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"invalid regular expression {value!r}: {e}") from None
    return value


def regex_list_validator(*fields: str):
    """A pydantic validator compiling the regex lists in ``fields`` (see :func:`check_regex_list`)."""

    def check(cls, v):  # noqa: ANN001
        return check_regex_list(v)

    return field_validator(*fields)(check)


class Job:
    """A runnable recipe kind: ``Config`` (a :class:`Strict` model) + ``run(config, run_dir)``."""

    Config: ClassVar[type[Strict]]

    def preflight(self, config: Any, run_dir: Path) -> None:
        """Refuse, before anything is written, what is already known to fail (e.g. resuming
        from a folder without a checkpoint). ``run_dir`` may not exist yet."""

    def run(self, config: Any, run_dir: Path) -> dict[str, Any]:
        """Do the work, write outputs under ``run_dir``, return the report dict."""
        raise NotImplementedError


def _format_error(e: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) if str(x).isprintable() else repr(x) for x in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        parts.append(f"{prefix}{loc}: {msg}" if loc else f"{prefix}{msg}")
    return "; ".join(parts)


def builtin_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}


def read_recipe_text(source: str | Path) -> dict[str, Any]:
    """Parse a recipe file (or a built-in recipe name) into a dict (strict YAML: see
    :mod:`sparsecraft.jobs.strict_yaml`)."""
    path = Path(source)
    if not path.is_file():
        builtins = builtin_recipes()
        if str(source) in builtins:
            path = builtins[str(source)]
        else:
            raise RecipeError(
                f"recipe {str(source)!r} is neither a file nor a built-in recipe; built-in: "
                f"{', '.join(builtins) or '(none)'}"
            )
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise RecipeError(f"cannot read recipe {str(path)!r}: {e.strerror or e}") from None
    doc = load_yaml(data, path)
    if not isinstance(doc, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping with a 'job' key")
    return doc


def parse_recipe(doc: dict[str, Any]) -> tuple[Job, Strict]:
    """Validate a recipe dict; returns the job and its validated config."""
    if not isinstance(doc, dict):
        raise RecipeError("a recipe must be a mapping with a 'job' key")
    check_plain_data(doc)
    doc = dict(doc)
    name = doc.pop("job", None)
    if name is None:
        raise RecipeError(f"recipe has no 'job' key; allowed jobs: {', '.join(JOBS.names())}")
    if not isinstance(name, str):
        raise RecipeError(f"job: must be a job name, got {reprlib.repr(name)}; allowed: {', '.join(JOBS.names())}")
    try:
        job_cls = JOBS.get(name)
    except SparsecraftError as e:
        raise RecipeError(f"job: {e}") from None
    try:
        config = job_cls.Config.model_validate(doc)
    except ValidationError as e:
        raise RecipeError(f"recipe error: {_format_error(e)}") from None
    return job_cls(), config


def load_recipe(source: str | Path | dict[str, Any]) -> tuple[Job, Strict]:
    doc = source if isinstance(source, dict) else read_recipe_text(source)
    return parse_recipe(doc)


def check_run_dir(path: Path, resume: bool = False) -> None:
    """Refuse a run folder that is a file, or that holds a finished run (``report.json``)
    which a new run would overwrite (a resumed run continues it instead)."""
    if path.exists() and not path.is_dir():
        raise SparsecraftError(f"run folder {str(path)!r} exists and is not a folder; give a folder path")
    if not resume and (path / "report.json").exists():
        raise SparsecraftError(
            f"run folder {str(path)!r} already holds a run (report.json); a new run would overwrite "
            "its results: choose another folder, delete it, or resume it"
        )


def make_run_dir(job_name: str, requested: str | Path | None, resume: bool = False) -> Path:
    """``requested`` or ``runs/<job>-<YYYYmmdd-HHMMSS>`` (suffixed if it exists); see
    :func:`check_run_dir` for what is refused."""
    if requested:
        path = Path(requested)
        check_run_dir(path, resume)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{job_name}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path("runs") / f"{job_name}-{stamp}-{n}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SparsecraftError(f"cannot create run folder {str(path)!r}: {e.strerror or e}") from None
    return path


def _recipe_yaml(doc: dict[str, Any]) -> str:
    try:
        return yaml.safe_dump(doc, sort_keys=False)
    except yaml.YAMLError:  # a Python-built recipe holding objects YAML cannot write: keep their repr
        return yaml.safe_dump(json.loads(json.dumps(doc, default=repr)), sort_keys=False)


def run_recipe(source: str | Path | dict[str, Any], out_dir: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Validate and run a recipe; returns (run folder, report dict)."""
    doc = source if isinstance(source, dict) else read_recipe_text(source)
    job, config = load_recipe(doc)
    name = job.registry_name  # type: ignore[attr-defined]
    requested = out_dir or getattr(getattr(config, "output", None), "dir", None)
    resume = bool(getattr(config, "resume", False))
    from sparsecraft.distributed import group

    if not group.is_writer():  # under torchrun the other ranks compute along and write nothing
        run_dir = Path(requested) if requested else Path("runs") / name
        result = job.run(config, run_dir)
        return run_dir, {"job": name, **result}
    if requested:
        check_run_dir(Path(requested), resume)
        job.preflight(config, Path(requested))
    run_dir = make_run_dir(name, requested, resume)
    if not requested:
        job.preflight(config, run_dir)
    atomic.write_text(run_dir / "recipe.yaml", _recipe_yaml(doc))
    t0 = time.perf_counter()
    result = job.run(config, run_dir)
    result = {"job": name, "wall_time_s": round(time.perf_counter() - t0, 3), **result}
    atomic.write_json(run_dir / "report.json", result)
    return run_dir, result
