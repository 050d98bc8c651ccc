"""Job ``train``: train a model sparse with any registered method, evaluate every epoch,
checkpoint, resume, and write the report (curves, plots, per-layer table).

    job: train
    model: mlp                  # mlp | cnn
    data: fashion-mnist         # fashion-mnist | digits | {name, path, limit}
    method: {name: rigl, distribution: erk, update: {every: 100, stop: 0.75}}
    sparsity: 0.9               # top level (sweeps override it), handed to the method
    seed: 0                     # top level (sweeps override it)
    epochs: 20
    batch_size: 128
    optimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4, schedule: cosine}

``method: dense`` (or null) trains without a method. ``resume: true`` (``sparsecraft train
--resume``) continues from the run folder's last checkpoint: model, masks, method state
(step, RNG, scores) and optimizer are restored exactly, and batches/learning rates are pure
functions of (seed, epoch, step), so the result equals an uninterrupted run's bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator

import sparsecraft
from sparsecraft import atomic
from sparsecraft.atomic import write_json, write_text
from sparsecraft.errors import RecipeError, SparsecraftError
from sparsecraft.jobs.recipe import JOBS, Job, OutputConfig, Strict, check_regex_list, regex_list_validator
from sparsecraft.methods import METHODS
from sparsecraft.schedules import make_schedule
from sparsecraft.training.loop import OptimSettings, StepTimes, evaluate, lr_at, make_optimizer, train_epoch
from sparsecraft.training.plots import plot_curves, plot_sparsity
from sparsecraft.training.state import (
    STATE_FILE,
    changed_settings,
    flatten_settings,
    load_training_state,
    read_training_state,
    save_training_state,
)

#: callables given every epoch's curve entry (a Ray Tune trial reports it for ASHA early stopping)
EPOCH_HOOKS: list[Callable[[dict[str, Any]], None]] = []
SEED = Field(0, ge=0, lt=2**32)  #: torch and numpy generators take 0 <= seed < 2**32
LAYER_RULE_KEYS = ("targets", "ignore")  #: regex-list options of a method


def _is_dense(spec: Any) -> bool:
    return spec is None or spec == "dense" or (isinstance(spec, dict) and spec.get("name") == "dense")


class DataConfig(Strict):
    name: str = "fashion-mnist"  #: fashion-mnist | digits
    path: str | None = None  #: folder of the Fashion-MNIST idx files
    limit: int | None = Field(None, ge=1)  #: keep the first n examples of each split (quick runs)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v not in ("fashion-mnist", "digits"):
            raise ValueError(f"unknown data {v!r}; allowed: fashion-mnist, digits")
        return v


class OptimizerConfig(Strict):
    name: str = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: str = "cosine"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v not in ("sgd", "adamw", "adam"):
            raise ValueError(f"unknown optimizer {v!r}; allowed: sgd, adamw, adam")
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        if v not in ("cosine", "constant"):
            raise ValueError(f"unknown lr schedule {v!r}; allowed: cosine, constant")
        return v


class CheckpointConfig(Strict):
    every_epochs: int = Field(1, ge=0)  #: 0 = only at the end


class IngredientConfig(Strict):
    seed: int = SEED
    weight_decay: float | None = Field(None, ge=0)


class SoupConfig(Strict):
    """Sparse Model Soups after dense training (see sparsecraft.training.soup_training)."""

    phases: int = Field(3, ge=1)
    ingredients: list[IngredientConfig] = Field(
        [IngredientConfig(seed=1), IngredientConfig(seed=2), IngredientConfig(seed=3)], min_length=1
    )  #: seed / weight_decay each
    mode: str = "uniform"  #: uniform | greedy
    epochs_per_phase: int = Field(2, ge=1)
    validation: int = Field(5000, ge=1)  #: examples held out of the training set for the greedy soup

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in ("uniform", "greedy"):
            raise ValueError(f"unknown soup mode {v!r}; allowed: uniform, greedy")
        return v


class TrainJobConfig(Strict):
    model: str = "mlp"
    data: DataConfig = DataConfig()
    method: dict[str, Any] | str | None = "rigl"
    sparsity: Any = 0.9  #: a number in [0, 1) or a schedule spec (sparsecraft.schedules)
    seed: int = SEED
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    ignore: list[str] | None = None  #: layers left dense; default: the model's own rule (cnn: first conv)
    checkpoint: CheckpointConfig = CheckpointConfig()
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    resume: bool = False
    soup: SoupConfig | None = None  #: sparse model soups after dense training (method must be dense/null)
    stop_after: int | None = Field(None, ge=1)  #: stop after this many epochs (as if interrupted; resume later)
    output: OutputConfig = OutputConfig()

    _ignore = regex_list_validator("ignore")

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v not in ("mlp", "cnn"):
            raise ValueError(f"unknown model {v!r}; allowed: mlp, cnn")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: Any) -> Any:
        name = v.get("name") if isinstance(v, dict) else v
        if name is None or name == "dense":
            return v
        if not isinstance(name, str) or name.lower() not in METHODS:
            raise ValueError(f"unknown method {name!r}; allowed: dense, {', '.join(METHODS.names())}")
        for key in LAYER_RULE_KEYS:
            rules = v.get(key) if isinstance(v, dict) else None
            if rules is not None and not (isinstance(rules, list) and all(isinstance(r, str) for r in rules)):
                raise ValueError(f"{key}: give a list of regular expressions, got {rules!r}")
            try:
                check_regex_list(rules)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        return v

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if not 0.0 <= v < 1.0:  # NaN fails this too
                raise ValueError(f"must be in [0, 1) (the fraction of zeros), got {v}")
            return v
        try:
            make_schedule(v)
        except SparsecraftError as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _combinations(self) -> TrainJobConfig:
        if self.data.name == "digits" and self.model != "mlp":
            raise ValueError("data 'digits' (8x8 images) works with model 'mlp' only")
        if self.soup is not None and (not _is_dense(self.method) or self.resume):
            raise ValueError("soup: runs after dense training; set method: dense and do not --resume")
        if self.soup is not None and not isinstance(self.sparsity, (int, float)):
            raise ValueError("soup: needs a number for 'sparsity' (the soup's final sparsity)")
        return self


def load_data(cfg: DataConfig, model: str) -> tuple[torch.Tensor, ...]:
    if cfg.name == "fashion-mnist":
        from sparsecraft.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(cfg.path, flatten=(model == "mlp"), limit=cfg.limit)
    if cfg.name == "digits":
        if model != "mlp":
            raise RecipeError("data 'digits' (8x8 images) works with model 'mlp' only")
        from sparsecraft.data.digits import load_digits_split

        xs = load_digits_split()
        return tuple(t[: cfg.limit] for t in xs) if cfg.limit else xs
    raise RecipeError(f"data.name: unknown data {cfg.name!r}; allowed: fashion-mnist, digits")


#: Recipe keys that may differ when a run is resumed: they change how it is run or reported, not
#: what is computed. Every other key (sparsity, method, epochs -- the LR and method schedules
#: span the whole run --, seed, data, optimizer, ...) must equal the checkpoint's (docs/training.md).
RESUME_MAY_CHANGE = ("progress", "threads", "checkpoint", "stop_after", "output", "resume", "data.path")


def run_settings(config: TrainJobConfig) -> dict[str, Any]:
    """The flattened settings that define what a run computes (stored in its checkpoints)."""
    doc = config.model_dump(mode="json")
    method = doc["method"]
    doc["method"] = {"name": "dense"} if _is_dense(method) else {"name": method} if isinstance(method, str) else method
    flat = flatten_settings(doc)
    return {k: v for k, v in flat.items() if not any(k == m or k.startswith(m + ".") for m in RESUME_MAY_CHANGE)}


def check_resume_settings(saved: dict[str, Any] | None, current: dict[str, Any], where: Path) -> None:
    """Refuse to resume when a key outside :data:`RESUME_MAY_CHANGE` differs from the checkpoint's."""
    if not isinstance(saved, dict):
        raise SparsecraftError(f"--resume: {where} does not record its run's settings; start a new run folder")
    changed = changed_settings(saved, current)
    if changed:
        raise SparsecraftError(
            f"--resume: the recipe differs from the run saved in {where} in {changed}; only "
            f"{', '.join(RESUME_MAY_CHANGE)} may change on resume: restore the others, or start a new run folder"
        )


def preflight_checkpoint(run_dir: Path, resume: bool, settings: dict[str, Any]) -> None:
    """Refuse a resume without a matching, intact checkpoint, and a fresh run over an earlier
    run's checkpoint -- before anything is written (the train and lm-train jobs)."""
    ckpt = run_dir / "checkpoint"
    atomic.recover_directory(ckpt)
    if resume:
        if not (ckpt / STATE_FILE).is_file():
            raise SparsecraftError(f"--resume: no checkpoint in {str(ckpt)!r}; run without --resume first")
        _, doc = read_training_state(ckpt)
        check_resume_settings(doc.get("extra", {}).get("settings"), settings, ckpt)
    elif ckpt.exists():
        raise SparsecraftError(
            f"{str(run_dir)!r} holds the checkpoint of an earlier run, which a new run would overwrite: "
            "continue it with --resume (recipe key resume: true), or choose another folder"
        )


def build_model(name: str, in_features: int) -> torch.nn.Module:
    from sparsecraft.models.vision import build_vision_model, mlp

    return mlp(in_features=in_features) if name == "mlp" else build_vision_model(name)


@JOBS.register("train")
class TrainJob(Job):
    """Train sparse (any method) with eval, checkpoints, resume, plots and a per-layer table."""

    Config = TrainJobConfig

    def preflight(self, config: TrainJobConfig, run_dir: Path) -> None:
        preflight_checkpoint(run_dir, config.resume, run_settings(config))

    def run(self, config: TrainJobConfig, run_dir: Path) -> dict[str, Any]:
        if config.threads:
            torch.set_num_threads(config.threads)
        x, y, xt, yt = load_data(config.data, config.model)
        torch.manual_seed(config.seed)
        model = build_model(config.model, x[0].numel())
        os_ = OptimSettings(**config.optimizer.model_dump())
        opt = make_optimizer(model, os_)
        spe = -(-len(x) // config.batch_size)
        total = spe * config.epochs
        method = self._method(config, model, opt, total)
        cycle = getattr(method, "lr_cycle_steps", None)
        ckpt = run_dir / "checkpoint"
        curves: list[dict[str, Any]] = []
        start_epoch, step = 0, 0
        settings = run_settings(config)
        self.preflight(config, run_dir)
        if config.resume:
            extra = load_training_state(ckpt, model, opt, method)
            check_resume_settings(extra.get("settings"), settings, ckpt)
            start_epoch, step, curves = int(extra["epoch"]), int(extra["step"]), list(extra["curves"])
        resumed = {"resumed_from_epoch": start_epoch} if config.resume else {}
        reported_sparsity = config.sparsity if method is not None or config.soup is not None else 0.0
        times = StepTimes()
        for epoch in range(start_epoch, config.epochs):
            tr_loss, tr_acc, step = train_epoch(
                model, opt, method, x, y, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
                step0=step, lr_fn=lambda t: lr_at(t, total, os_.lr, os_.schedule, cycle), times=times,
                progress=config.progress, desc=f"epoch {epoch + 1}/{config.epochs}",
            )  # fmt: skip
            te_loss, te_acc = evaluate(model, xt, yt)
            rep = sparsecraft.report(model)
            curves.append({"epoch": epoch + 1, "step": step, "train_loss": tr_loss, "train_accuracy": tr_acc,
                           "test_loss": te_loss, "test_accuracy": te_acc, "sparsity": rep.sparsity,
                           "lr": lr_at(step, total, os_.lr, os_.schedule, cycle)})  # fmt: skip
            for hook in list(EPOCH_HOOKS):
                hook(dict(curves[-1]))
            every = config.checkpoint.every_epochs
            stop = config.stop_after is not None and epoch + 1 >= config.stop_after and epoch + 1 < config.epochs
            if (every and (epoch + 1) % every == 0) or epoch + 1 == config.epochs or stop:
                extra = {"epoch": epoch + 1, "step": step, "curves": curves, "settings": settings}
                save_training_state(ckpt, model, opt, method, extra)
            if stop:
                return {"method": getattr(method, "name", "dense"), "sparsity": reported_sparsity, "seed": config.seed,
                        **resumed, "stopped_after_epoch": epoch + 1, "curves": curves, "final": None}  # fmt: skip
        result_extra: dict[str, Any] = {}
        if config.soup is not None:
            from sparsecraft.training.soup_training import run_soup

            sc = config.soup
            validation = min(sc.validation, len(x) // 5)
            if validation < 1:
                raise RecipeError(f"soup: {len(x)} training examples are too few to hold out a validation set")
            model, history = run_soup(
                model, (x, y), sparsity=float(config.sparsity), phases=sc.phases,
                ingredients=[i.model_dump(exclude_none=True) for i in sc.ingredients], mode=sc.mode,
                epochs_per_phase=sc.epochs_per_phase, batch_size=config.batch_size, optim=os_,
                validation=validation, progress=False,
            )  # fmt: skip
            result_extra = {"method": "sparse-model-soups", "soup": history}
        out = self._finish(config, run_dir, model, method, xt, yt, curves, times, spe, total)
        out.update(result_extra, **resumed, sparsity=reported_sparsity)
        return out

    @staticmethod
    def _method(config: TrainJobConfig, model, opt, total: int):  # noqa: ANN001, ANN205
        spec = config.method
        if _is_dense(spec):
            return None
        kw = dict(spec) if isinstance(spec, dict) else {"name": spec}
        name = kw.pop("name")
        if config.ignore is not None:
            kw.setdefault("ignore", config.ignore)
        elif config.model == "cnn":
            from sparsecraft.models.vision import DEFAULT_IGNORE

            kw.setdefault("ignore", DEFAULT_IGNORE["cnn"])
        kw.setdefault("seed", config.seed)
        if "sparsity" in kw:
            raise RecipeError("method.sparsity: give the sparsity at the top level of the recipe ('sparsity:')")
        try:
            return sparsecraft.methods.attach(
                model, opt, method=name, total_steps=total, sparsity=config.sparsity, **kw
            )
        except TypeError as e:
            raise RecipeError(f"method: bad arguments for {name!r}: {e}") from None

    @staticmethod
    def _finish(config, run_dir, model, method, xt, yt, curves, times, spe, total) -> dict[str, Any]:  # noqa: ANN001
        if method is not None:
            method.finalize()
        te_loss, te_acc = evaluate(model, xt, yt)
        rep = sparsecraft.report(model)
        table = rep.to_markdown()
        write_text(run_dir / "layers.md", table + "\n")
        target = []
        if method is not None:
            target = [(t, method.target_sparsity(t)) for t in range(0, total + 1, max(1, total // 200))]
        updates = method.dynamics.to_json() if method is not None else []
        plots = [str(plot_curves(curves, run_dir / "curves.png")),
                 str(plot_sparsity(curves, target, updates, spe, run_dir / "sparsity.png"))]  # fmt: skip
        dyn = {"summary": method.dynamics.summary(), "updates": updates} if method is not None else None
        write_json(run_dir / "mask_dynamics.json", dyn or {})
        name = None if method is None else method.name
        return {
            "method": name or "dense",
            "sparsity": config.sparsity if method is not None else 0.0,
            "seed": config.seed,
            "final": {"test_accuracy": te_acc, "test_loss": te_loss, "density": 1.0 - rep.sparsity,
                      "sparsity": rep.sparsity, "params": rep.model_numel, "nonzero_params": rep.model_nonzeros},
            "curves": curves,
            "mask_dynamics": dyn["summary"] if dyn else None,
            "timing": times.summary(),
            "layers": rep.to_dict(),
            "plots": plots,
            "table_markdown": table,
        }  # fmt: skip
