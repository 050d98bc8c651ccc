"""Job ``digits-sweep``: train a small MLP on scikit-learn's digits, then prune it one-shot at
several sparsities with several criteria and tabulate test accuracy vs. sparsity.

It runs in seconds on a laptop CPU and exercises the whole core: the plan (pattern /
distribution / keep-dense rules), every criterion (saliency gets a few training batches),
exact reports, and a bit-packed checkpoint of one pruned model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from tqdm import tqdm

from sparsecraft.atomic import write_json, write_text
from sparsecraft.criteria import CRITERIA
from sparsecraft.data.digits import load_digits_split
from sparsecraft.formats.checkpoint import save
from sparsecraft.jobs.prune_config import PruneConfig
from sparsecraft.jobs.recipe import JOBS, Job, OutputConfig, Strict, registry_name_validator
from sparsecraft.oneshot.api import prune


class ModelConfig(Strict):
    hidden: list[Annotated[int, Field(ge=1)]] = [128, 64]  #: hidden layer widths


class TrainConfig(Strict):
    epochs: int = Field(40, ge=1)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(0.0, ge=0)


class SweepConfig(Strict):
    sparsities: list[float] = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95]
    criteria: list[str] = ["magnitude", "random", "saliency"]
    saliency_batches: int = Field(4, ge=1)  #: training batches the saliency criterion sees

    @field_validator("sparsities")
    @classmethod
    def _range(cls, v: list[float]) -> list[float]:
        bad = [s for s in v if not 0.0 <= s <= 1.0]
        if bad or not v:
            raise ValueError(f"sparsities must be a non-empty list of values in [0, 1], got {v}")
        return v

    @field_validator("criteria")
    @classmethod
    def _criteria(cls, v: list[str]) -> list[str]:
        for c in v:
            if c.lower() not in CRITERIA:
                raise ValueError(f"unknown criterion {c!r}; allowed: {', '.join(CRITERIA.names())}")
        return v


class CheckpointConfig(Strict):
    criterion: str = "magnitude"
    sparsity: float = Field(0.8, ge=0.0, le=1.0)

    _criterion = registry_name_validator(CRITERIA, "criterion")


class DigitsSweepConfig(Strict):
    seed: int = Field(0, ge=0, lt=2**32)  #: numpy's generators take 0 <= seed < 2**32
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    sparsity: PruneConfig = PruneConfig()
    sweep: SweepConfig = SweepConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    output: OutputConfig = OutputConfig()


def build_mlp(hidden: list[int], n_in: int = 64, n_out: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.ReLU()]
        n_in = h
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def train_dense(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    for _ in tqdm(range(cfg.epochs), desc="train", unit="epoch", leave=False):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def markdown_table(
    sparsities: list[float], criteria: list[str], acc: dict[str, dict[float, float]], dense: float
) -> str:
    head = "| sparsity | " + " | ".join(criteria) + " |"
    lines = [head, "|" + "---|" * (len(criteria) + 1)]
    lines.append("| dense | " + " | ".join(f"{100 * dense:.2f}" for _ in criteria) + " |")
    for s in sparsities:
        cells = " | ".join(f"{100 * acc[c][s]:.2f}" for c in criteria)
        lines.append(f"| {s:.2f} | {cells} |")
    return "\n".join(lines)


@JOBS.register("digits-sweep")
class DigitsSweep(Job):
    """Train an MLP on sklearn digits, prune one-shot over sparsities x criteria, tabulate accuracy."""

    Config = DigitsSweepConfig

    def run(self, config: DigitsSweepConfig, run_dir: Path) -> dict[str, Any]:
        torch.manual_seed(config.seed)
        x_tr, y_tr, x_te, y_te = load_digits_split(config.seed)
        model = build_mlp(config.model.hidden)
        train_dense(model, x_tr, y_tr, config.train, config.seed)
        dense_acc = accuracy(model, x_te, y_te)
        save(model, run_dir / "dense.safetensors", extra={"test_accuracy": dense_acc})
        bs = config.train.batch_size
        calib = [(x_tr[i : i + bs], y_tr[i : i + bs]) for i in range(0, config.sweep.saliency_batches * bs, bs)]
        plan = config.sparsity.prune_kwargs()
        criteria = [c.lower() for c in config.sweep.criteria]
        acc: dict[str, dict[float, float]] = {c: {} for c in criteria}
        rows = []
        grid = [(c, s) for c in criteria for s in config.sweep.sparsities]
        for crit, s in tqdm(grid, desc="prune sweep", unit="model"):
            pruned = copy.deepcopy(model)
            rep = prune(pruned, s, **{**plan, "criterion": crit}, calib=calib, progress=False)
            acc[crit][s] = accuracy(pruned, x_te, y_te)
            rows.append(
                {"criterion": crit, "sparsity": s, "true_sparsity": rep.sparsity, "test_accuracy": acc[crit][s]}
            )
            if crit == config.checkpoint.criterion.lower() and abs(s - config.checkpoint.sparsity) < 1e-9:
                save(pruned, run_dir / "pruned.safetensors", extra={"test_accuracy": acc[crit][s]})
                write_text(run_dir / "pruned_layers.md", rep.to_markdown() + "\n")
        if not (run_dir / "pruned.safetensors").exists():
            pruned = copy.deepcopy(model)
            prune(pruned, config.checkpoint.sparsity, **{**plan, "criterion": config.checkpoint.criterion}, calib=calib,
                  progress=False)
            save(pruned, run_dir / "pruned.safetensors", extra={"test_accuracy": accuracy(pruned, x_te, y_te)})
        table = markdown_table(config.sweep.sparsities, criteria, acc, dense_acc)
        write_text(run_dir / "table.md", f"# Digits MLP: test accuracy (%) vs. one-shot sparsity\n\n{table}\n")
        result = {"dense_test_accuracy": dense_acc, "rows": rows, "table_markdown": table}
        write_json(run_dir / "results.json", result)
        return result
