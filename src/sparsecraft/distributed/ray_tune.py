"""Run a grid of independent runs as Ray Tune trials (the optional extra ``sparsecraft[ray]``).

:func:`run_trials` takes the grid points (JSON-able dicts) and a module-level function
``fn(point, report)`` that performs one run; each point becomes one trial of a
``ray.tune.Tuner`` over ``tune.grid_search(points)`` with its own resources
(``tune.with_resources``: CPUs / GPUs per trial) and, optionally, ASHA early stopping
(``ray.tune.schedulers.ASHAScheduler`` on a metric the run reports through ``report(dict)``,
e.g. the test loss after every epoch, ``time_attr="epoch"``). What a run writes (its run
folder, its report) is the run's business, so a grid run on Ray leaves exactly the files the
local runner leaves; this module only says how each trial ended (:class:`TrialOutcome`).

Ray starts a local instance when none is running (``ray.init``); Ray's own bookkeeping goes to
``storage`` (``<sweep folder>/ray``). Ray workers import sparsecraft through the driver's
``sys.path``, passed on as ``PYTHONPATH`` in the runtime environment, so a source checkout works.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsecraft.errors import MissingDependencyError, SparsecraftError

Report = Callable[[dict[str, Any]], None]
TrialFn = Callable[[dict[str, Any], Report], None]


def require_ray() -> Any:
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        raise MissingDependencyError("--engine ray needs Ray Tune: pip install 'sparsecraft[ray]'") from None
    return ray


@dataclass
class TrialOutcome:
    """How one grid point's trial ended: ``done``, ``stopped`` (ASHA) or ``failed``."""

    point: dict[str, Any]
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def check_asha(asha: dict[str, Any] | None) -> dict[str, Any] | None:
    """ASHA settings with defaults: metric ``test_loss``, mode ``min``, time ``epoch``,
    grace period 1, reduction factor 2, ``max_t`` (required: the number of epochs)."""
    if asha is None:
        return None
    allowed = {"metric", "mode", "time_attr", "grace_period", "reduction_factor", "max_t"}
    unknown = set(asha) - allowed
    if unknown:
        raise SparsecraftError(f"unknown ASHA setting(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
    out = {"metric": "test_loss", "mode": "min", "time_attr": "epoch", "grace_period": 1, "reduction_factor": 2,
           **asha}
    if out["mode"] not in ("min", "max"):
        raise SparsecraftError(f"ASHA mode must be 'min' or 'max', got {out['mode']!r}")
    if not isinstance(out.get("max_t"), int) or out["max_t"] < 1:
        raise SparsecraftError("ASHA needs max_t (the number of epochs of each run) as an integer >= 1")
    return out


def _trainable(fn: TrialFn) -> Callable[[dict[str, Any]], None]:
    def trainable(config: dict[str, Any]) -> None:
        from ray import tune

        reported = [False]

        def report(metrics: dict[str, Any]) -> None:
            reported[0] = True
            tune.report(dict(metrics))

        fn(config["point"], report)
        if not reported[0]:
            tune.report({"finished": 1})

    return trainable


def run_trials(points: list[dict[str, Any]], fn: TrialFn, storage: str | os.PathLike, *, cpus_per_trial: float = 1,
               gpus_per_trial: float = 0, asha: dict[str, Any] | None = None,
               max_concurrent: int | None = None) -> list[TrialOutcome]:
    """One Ray Tune trial per point (see the module docstring); outcomes in ``points`` order."""
    ray = require_ray()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise SparsecraftError(f"per-trial resources must be positive, got cpu={cpus_per_trial}, gpu={gpus_per_trial}")
    asha = check_asha(asha)
    if not points:
        return []
    if not ray.is_initialized():
        path = os.pathsep.join(p for p in sys.path if p)
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": path}}, include_dashboard=False, log_to_driver=False)
    # ASHA stops a trial once its time reaches max_t, i.e. right after the last epoch's report and
    # before the run writes its report: give it one more unit so a full run always finishes
    scheduler = ASHAScheduler(**{**asha, "max_t": asha["max_t"] + 1}) if asha else None
    storage = Path(storage).resolve()
    tuner = tune.Tuner(
        tune.with_resources(_trainable(fn), {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
        param_space={"point": tune.grid_search(points)},
        tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=1, max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name="trials", storage_path=str(storage), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    grid = tuner.fit()
    outcomes: list[TrialOutcome] = []
    by_key, orphan_errors = {}, []
    for result in grid:
        if not result.config:  # a trial that died before it started (e.g. its worker was killed)
            orphan_errors.append(_message(result.error) if result.error is not None else "trial did not start")
            continue
        point = result.config["point"]
        metrics = {k: v for k, v in (result.metrics or {}).items() if not isinstance(v, dict)}
        if result.error is not None:
            status, error = "failed", _message(result.error)
        else:
            stopped = asha is not None and metrics.get(asha["time_attr"], asha["max_t"]) < asha["max_t"]
            status, error = ("stopped" if stopped else "done"), None
        by_key[_key(point)] = TrialOutcome(point, status, metrics, error)
    for p in points:
        lost = orphan_errors.pop(0) if orphan_errors else "Ray returned no result for this trial"
        outcomes.append(by_key.get(_key(p), TrialOutcome(p, "failed", error=lost)))
    return outcomes


def _key(point: dict[str, Any]) -> str:
    import json

    return json.dumps(point, sort_keys=True, default=str)


def _message(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    cause = getattr(err, "cause", None) or err.__cause__
    if cause is not None:
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    return text[-1] if text else type(err).__name__
