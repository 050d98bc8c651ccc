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

from pathlib import Path
from typing import Any

import torch
from pydantic import field_validator
from tqdm import tqdm

import sparsecraft
from sparsecraft.atomic import write_json
from sparsecraft.errors import RecipeError, SparsecraftError
from sparsecraft.jobs.recipe import JOBS, Job, OutputConfig, Strict
from sparsecraft.methods import METHODS
from sparsecraft.training.loop import OptimSettings, StepTimes, evaluate, lr_at, make_optimizer, train_epoch
from sparsecraft.training.plots import plot_curves, plot_sparsity
from sparsecraft.training.state import STATE_FILE, load_training_state, save_training_state


class DataConfig(Strict):
    name: str = "fashion-mnist"  #: fashion-mnist | digits
    path: str | None = None  #: folder of the Fashion-MNIST idx files
    limit: int | None = None  #: keep the first n examples of each split (quick runs)


class OptimizerConfig(Strict):
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"


class CheckpointConfig(Strict):
    every_epochs: int = 1  #: 0 = only at the end


class SoupConfig(Strict):
    """Sparse Model Soups after dense training (see sparsecraft.training.soup_training)."""

    phases: int = 3
    ingredients: list[dict[str, Any]] = [{"seed": 1}, {"seed": 2}, {"seed": 3}]  #: seed / weight_decay each
    mode: str = "uniform"  #: uniform | greedy
    epochs_per_phase: int = 2
    validation: int = 5000  #: examples held out of the training set for the greedy soup

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in ("uniform", "greedy"):
            raise ValueError(f"unknown soup mode {v!r}; allowed: uniform, greedy")
        return v

    @field_validator("ingredients")
    @classmethod
    def _ingredients(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for item in v:
            bad = set(item) - {"seed", "weight_decay"}
            if bad:
                raise ValueError(f"unknown ingredient keys {sorted(bad)}; allowed: seed, weight_decay")
        if not v:
            raise ValueError("a soup needs at least one ingredient")
        return v


class TrainJobConfig(Strict):
    model: str = "mlp"
    data: DataConfig = DataConfig()
    method: dict[str, Any] | str | None = "rigl"
    sparsity: Any = 0.9
    seed: int = 0
    epochs: int = 20
    batch_size: int = 128
    optimizer: OptimizerConfig = OptimizerConfig()
    keep_dense: list[str] | None = None  #: default: the model's own rule (cnn: first conv)
    checkpoint: CheckpointConfig = CheckpointConfig()
    threads: int | None = None
    progress: bool = True
    resume: bool = False
    soup: SoupConfig | None = None  #: sparse model soups after dense training (method must be dense/null)
    stop_after: int | None = None  #: stop after this many epochs (as if interrupted; resume later)
    output: OutputConfig = OutputConfig()

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
        return v

    @field_validator("epochs", "batch_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v


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


def build_model(name: str, in_features: int) -> torch.nn.Module:
    from sparsecraft.models.vision import build_vision_model, mlp

    return mlp(in_features=in_features) if name == "mlp" else build_vision_model(name)


@JOBS.register("train")
class TrainJob(Job):
    """Train sparse (any method) with eval, checkpoints, resume, plots and a per-layer table."""

    Config = TrainJobConfig

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
        if config.soup is not None and (method is not None or config.resume):
            raise RecipeError("soup: runs after dense training; set method: dense and do not --resume")
        if config.resume:
            if not (ckpt / STATE_FILE).is_file():
                raise SparsecraftError(f"--resume: no checkpoint in {str(ckpt)!r}; run without --resume first")
            extra = load_training_state(ckpt, model, opt, method)
            start_epoch, step, curves = int(extra["epoch"]), int(extra["step"]), list(extra["curves"])
        times = StepTimes()
        for epoch in range(start_epoch, config.epochs):
            bar = (
                (lambda it, e=epoch: tqdm(it, desc=f"epoch {e + 1}/{config.epochs}", leave=False))
                if config.progress
                else None
            )
            tr_loss, tr_acc, step = train_epoch(
                model, opt, method, x, y, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
                step0=step, lr_fn=lambda t: lr_at(t, total, os_.lr, os_.schedule, cycle), times=times, progress=bar,
            )  # fmt: skip
            te_loss, te_acc = evaluate(model, xt, yt)
            rep = sparsecraft.report(model)
            curves.append({"epoch": epoch + 1, "step": step, "train_loss": tr_loss, "train_accuracy": tr_acc,
                           "test_loss": te_loss, "test_accuracy": te_acc, "sparsity": rep.sparsity,
                           "lr": lr_at(step, total, os_.lr, os_.schedule, cycle)})  # fmt: skip
            every = config.checkpoint.every_epochs
            if (every and (epoch + 1) % every == 0) or epoch + 1 == config.epochs:
                save_training_state(ckpt, model, opt, method, {"epoch": epoch + 1, "step": step, "curves": curves})
            if config.stop_after is not None and epoch + 1 >= config.stop_after and epoch + 1 < config.epochs:
                save_training_state(ckpt, model, opt, method, {"epoch": epoch + 1, "step": step, "curves": curves})
                return {"method": getattr(method, "name", "dense"), "sparsity": config.sparsity, "seed": config.seed,
                        "stopped_after_epoch": epoch + 1, "curves": curves, "final": None}  # fmt: skip
        result_extra: dict[str, Any] = {}
        if config.soup is not None:
            from sparsecraft.training.soup_training import run_soup

            sc = config.soup
            model, history = run_soup(
                model, (x, y), sparsity=float(config.sparsity), phases=sc.phases, ingredients=sc.ingredients,
                mode=sc.mode, epochs_per_phase=sc.epochs_per_phase, batch_size=config.batch_size, optim=os_,
                validation=min(sc.validation, len(x) // 5), progress=None,
            )  # fmt: skip
            result_extra = {"method": "sparse-model-soups", "soup": history}
        out = self._finish(config, run_dir, model, method, xt, yt, curves, times, spe, total)
        if result_extra:
            out.update(result_extra, sparsity=config.sparsity)
        return out

    @staticmethod
    def _method(config: TrainJobConfig, model, opt, total: int):  # noqa: ANN001, ANN205
        spec = config.method
        if spec is None or spec == "dense" or (isinstance(spec, dict) and spec.get("name") == "dense"):
            return None
        kw = dict(spec) if isinstance(spec, dict) else {"name": spec}
        name = kw.pop("name")
        if config.keep_dense is not None:
            kw.setdefault("keep_dense", config.keep_dense)
        elif config.model == "cnn":
            from sparsecraft.models.vision import KEEP_DENSE

            kw.setdefault("keep_dense", KEEP_DENSE["cnn"])
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
        (run_dir / "layers.md").write_text(table + "\n")
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
