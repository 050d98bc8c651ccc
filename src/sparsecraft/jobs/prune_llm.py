"""Job ``prune-llm``: one-shot prune a language model (one or several configurations), measure
perplexity before/after, and write the pruned model, a table and a plot.

    job: prune-llm
    model: smollm2-135m            # built-in name or a local Hugging Face directory
    data: {calib: shakespeare, n_calib: 32, n_eval: 16, seq_len: 512}
    runs:
      - {method: sparsegpt, sparsity: 0.5, pattern: 2:4}
      - {method: slicegpt, sparsity: 0.25}            # structure removal: a smaller dense model
      - {method: depth, sparsity: 0, options: {blocks: 4}}
    save: true                     # pruned HF directory + sparse checkpoint per run

Outputs in the run folder: ``results.json`` and ``table.md`` (rewritten after every
configuration, so a partial table exists if the run is stopped), ``perplexity.png``, and with
``save`` a folder per run holding ``model/`` (``from_pretrained``-loadable, tokenizer included),
``sparse.safetensors`` (:func:`sparsecraft.save`, masks as bits) and ``sparsity.md``. Rows of
structure-removing methods (slicegpt, channels, heads, depth) carry ``params`` and a parameter
column; their ``model/`` config describes the smaller shapes (docs/structure.md) and they have
no ``sparse.safetensors`` (no masks).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator

from sparsecraft import atomic
from sparsecraft.errors import SparsecraftError
from sparsecraft.formats.checkpoint import save as save_sparse
from sparsecraft.jobs.prune_config import check_pattern_spec
from sparsecraft.jobs.recipe import JOBS, Job, OutputConfig, Strict, regex_list_validator
from sparsecraft.masks import remove_masks

#: sparsecraft.oneshot.recovery.LOSSES (not imported: torch-heavy; a test keeps the two equal)
RECOVERY_LOSSES = ("squarehead", "lm", "lm+squarehead")


class DataConfig(Strict):
    calib: str = "shakespeare"  #: text file, folder of .txt, or built-in name
    eval: str | None = None  #: default: the calibration source (its last 10%)
    n_calib: int = Field(32, ge=0)
    n_eval: int | None = Field(16, ge=1)
    seq_len: int = Field(512, ge=2)
    seed: int = Field(0, ge=0, lt=2**32)


class RunConfig(Strict):
    """One row: the arguments of :func:`sparsecraft.prune` (calibration comes from ``data``)."""

    method: str | None = None  #: a one-shot method (sparsegpt); None = prune by ``criterion``
    criterion: str | None = None  #: magnitude (default), wanda, ...
    sparsity: float = Field(0.5, ge=0.0, le=1.0)
    pattern: str = "unstructured"
    distribution: str | dict = "uniform"  #: uniform, erk, owl or {type: owl, m: 5, lam: 0.08}
    name: str | None = None
    save: bool | None = None  #: save this run's model (None = the job's ``save``)
    options: dict[str, Any] = {}  #: method options (slicegpt: embeddings, round_to; depth: blocks; heads: head_mode)

    @model_validator(mode="after")
    def _one_of(self) -> RunConfig:
        if self.method is not None and self.criterion is not None and not structural(self.method, "accepts_criterion"):
            raise ValueError(f"give method {self.method!r} or criterion {self.criterion!r}, not both")
        if self.options and self.method is None:
            raise ValueError("options belong to a method; give method too")
        return self

    @property
    def algorithm(self) -> str:
        return self.method or self.criterion or "magnitude"

    @field_validator("method")
    @classmethod
    def _method(cls, v: str | None) -> str | None:
        from sparsecraft.oneshot.base import ONESHOT

        if v is not None and v.lower() not in ONESHOT:
            raise ValueError(f"unknown one-shot method {v!r}; allowed: {', '.join(ONESHOT.names())} "
                             "(magnitude and wanda are criteria: criterion: wanda)")
        return v

    @field_validator("criterion")
    @classmethod
    def _criterion(cls, v: str | None) -> str | None:
        from sparsecraft.criteria import CRITERIA

        if v is not None and v.lower() not in CRITERIA:
            raise ValueError(f"unknown criterion {v!r}; allowed: {', '.join(CRITERIA.names())}")
        return v

    @field_validator("distribution")
    @classmethod
    def _distribution(cls, v: str | dict) -> str | dict:
        from sparsecraft.distributions import DISTRIBUTIONS, make_distribution
        from sparsecraft.errors import SparsecraftError

        name = v.get("type") if isinstance(v, dict) else v
        if not isinstance(name, str) or name.lower() not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {name!r}; allowed: {', '.join(DISTRIBUTIONS.names())}")
        try:
            make_distribution(v)
        except SparsecraftError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return check_pattern_spec(v)

    def label(self) -> str:
        if self.name:
            return self.name
        dist = self.distribution if isinstance(self.distribution, str) else self.distribution.get("type", "")
        amount = self.pattern if ":" in self.pattern else f"{round(self.sparsity * 100)}%"
        if self.method == "depth" and self.options.get("blocks") is not None:
            amount = f"{self.options['blocks']} blocks"
        return f"{self.algorithm}{'+' + dist if dist != 'uniform' else ''} {amount}"


def structural(method: str | None, attr: str = "structural") -> bool:
    """An attribute of a structure-removing one-shot method (False for the masking ones)."""
    from sparsecraft.oneshot.base import ONESHOT

    if method is None or method.lower() not in ONESHOT:
        return False
    cls = ONESHOT.get(method)
    return bool(getattr(cls, "structural", False) and getattr(cls, attr, False))


class RecoveryConfig(Strict):
    steps: int = Field(0, ge=0)  #: 0 = no recovery fine-tune
    loss: str = "squarehead"  #: squarehead, lm, or lm+squarehead (task + feature_weight x SquareHead)
    lr: float = Field(1e-5, gt=0)
    batch_size: int = Field(1, ge=1)
    feature_weight: float = Field(1.0, ge=0.0)  #: lambda of the SquareHead term
    kd_weight: float = Field(0.0, ge=0.0)  #: > 0 adds logit distillation
    kd_temperature: float = Field(1.0, gt=0.0)

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str) -> str:
        if v not in RECOVERY_LOSSES:
            raise ValueError(f"unknown recovery loss {v!r}; allowed: {', '.join(RECOVERY_LOSSES)}")
        return v


class PruneLLMConfig(Strict):
    model: str = "smollm2-135m"
    data: DataConfig = DataConfig()
    runs: list[RunConfig] = Field([RunConfig(method="sparsegpt")], min_length=1)
    dense: bool = True  #: evaluate the dense model first
    targets: list[str] | None = None
    ignore: list[str] | None = None
    batch_size: int = Field(8, ge=1)  #: calibration windows per forward
    eval_batch_size: int = Field(2, ge=1)
    recovery: RecoveryConfig = RecoveryConfig()
    save: bool = True
    plot: bool = True
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    offload: str = "none"  #: none | disk (block by block from the safetensors) | auto (disk when it would not fit)
    distributed: bool = False  #: data-parallel calibration under torch.distributed (torchrun)
    output: OutputConfig = OutputConfig()

    @field_validator("offload")
    @classmethod
    def _offload(cls, v: str) -> str:
        if v not in ("none", "disk", "auto"):
            raise ValueError(f"unknown offload {v!r}; allowed: none, disk, auto")
        return v

    _layer_rules = regex_list_validator("targets", "ignore")

    @model_validator(mode="after")
    def _calibration(self) -> PruneLLMConfig:
        needy = [r.label() for r in self.runs if r.algorithm != "magnitude" or r.label().split()[0].endswith("+owl")]
        if needy and self.data.n_calib < 1:
            raise ValueError(f"data.n_calib: {', '.join(needy)} need calibration windows; give n_calib >= 1")
        if self.recovery.steps and self.data.n_calib < 1:
            raise ValueError("data.n_calib: the recovery fine-tune trains on calibration windows; give n_calib >= 1")
        moved = [r.label() for r in self.runs
                 if structural(r.method) and not structural(r.method, "keeps_block_outputs")]
        if self.recovery.steps and "squarehead" in self.recovery.loss and moved:
            raise ValueError(f"recovery.loss: SquareHead compares block outputs, which {', '.join(moved)} change "
                             "(rotated or removed blocks); use loss: lm")
        return self


def _atomic_json(path: Path, obj: Any) -> None:
    atomic.write_json(path, obj)


def save_hf(model: torch.nn.Module, tokenizer: Any, dest: Path) -> Path:
    """Write a ``from_pretrained``-loadable copy (masks dropped, zeros kept), atomically; a model
    with removed structures gets the config of its new shapes (sparsecraft.structure.save_pretrained)."""
    from sparsecraft.structure.hf import save_pretrained

    return save_pretrained(model, dest, tokenizer)


def table_markdown(rows: list[dict[str, Any]], extra: dict[str, str] | None = None) -> str:
    """The results table; ``extra`` maps a column title to a row key (a parameter column is added
    when a row removed structures)."""
    extra = dict(extra or {})
    if any("params_m" in r for r in rows if r.get("method") != "dense"):
        extra = {"parameters (M)": "params_m", **extra}
    head = ["config", "perplexity", "prune wall time (s)", "peak RSS (MB)", "true sparsity", *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["config"],
            "-" if r.get("perplexity") is None else f"{r['perplexity']:.2f}",
            "-" if r.get("wall_time_s") is None else f"{r['wall_time_s']:.1f}",
            "-" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}",
            f"{r['true_sparsity']:.4f}",
            *[str(r.get(k, "-")) for k in extra.values()],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_perplexity(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 4))
    ax.bar([r["config"] for r in rows], [r["perplexity"] for r in rows], color="#4878a8")
    dense = [r["perplexity"] for r in rows if r["method"] == "dense"]
    if dense:
        ax.axhline(dense[0], color="k", ls="--", lw=1, label=f"dense {dense[0]:.2f}")
        ax.legend()
    ax.set_yscale("log")
    ax.set_ylabel("perplexity (log)")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110)


def run_prune_llm(cfg: PruneLLMConfig, run_dir: Path,
                  on_row: Callable[[list[dict[str, Any]]], None] | None = None) -> dict[str, Any]:
    from sparsecraft.data.text import build_protocol
    from sparsecraft.distributed import group
    from sparsecraft.evaluation.perplexity import perplexity
    from sparsecraft.models import load_model
    from sparsecraft.oneshot.api import prune
    from sparsecraft.oneshot.memory import PeakRSS
    from sparsecraft.oneshot.recovery import recover

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    writer = group.is_writer()  # under torchrun only rank 0 writes
    if cfg.offload != "none":
        onloaded = _maybe_offloaded(cfg, run_dir)
        if onloaded is not None:
            return onloaded
    lm = load_model(cfg.model, kind="causal-lm")
    if lm.tokenizer is None:
        raise SparsecraftError(f"model {cfg.model!r} has no tokenizer files")
    d = cfg.data
    proto = build_protocol(lm.tokenizer, d.calib, d.eval, d.n_calib, d.n_eval, d.seq_len, d.seed)
    dense_state = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    from sparsecraft.structure.api import count_params

    dense_params = count_params(lm.model)
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"model": cfg.model, "model_dir": str(lm.path), "protocol": proto.fingerprint, "rows": rows}

    def emit() -> None:
        if not writer:
            return
        _atomic_json(run_dir / "results.json", out)
        atomic.write_text(run_dir / "table.md", table_markdown(rows) + "\n")
        if on_row is not None:
            on_row(rows)

    def ppl() -> float:
        return perplexity(lm.model, proto.eval, cfg.eval_batch_size, cfg.progress)

    if cfg.dense:
        t0 = time.perf_counter()
        rows.append({"config": "dense", "method": "dense", "perplexity": ppl(), "wall_time_s": None,
                     "peak_rss_mb": None, "true_sparsity": 0.0, "eval_time_s": round(time.perf_counter() - t0, 2),
                     "params": dense_params, "params_m": f"{dense_params / 1e6:.1f}"})
        emit()
    many = len(cfg.runs) > 1
    for i, r in enumerate(cfg.runs):
        if i and count_params(lm.model) != dense_params:  # the last run removed structures: a fresh copy
            lm.model = load_model(cfg.model, kind="causal-lm").model
        elif i:
            remove_masks(lm.model)
            lm.model.load_state_dict(dense_state)
        with PeakRSS() as mem:
            rep = prune(lm.model, r.sparsity, method=r.method, criterion=r.criterion, pattern=r.pattern,
                        distribution=r.distribution, targets=cfg.targets, ignore=cfg.ignore, calib=proto.calib,
                        batch_size=cfg.batch_size, progress=cfg.progress, distributed=cfg.distributed or None,
                        **r.options)
        row = {"config": r.label(), **rep.info, "true_sparsity": rep.sparsity, "peak_rss_mb": round(mem.peak_mb, 1)}
        if "structure" in rep.info:
            row["params"] = rep.info["structure"]["params_after"]
            row["params_m"] = f"{row['params'] / 1e6:.1f}"
        t0 = time.perf_counter()
        row["perplexity"] = ppl()
        row["eval_time_s"] = round(time.perf_counter() - t0, 2)
        if cfg.recovery.steps:
            rc = cfg.recovery
            teacher = None
            if "squarehead" in rc.loss or rc.kd_weight > 0:  # the dense model is the teacher
                teacher = load_model(cfg.model, kind="causal-lm").model if "structure" in rep.info \
                    else copy.deepcopy(lm.model)
                teacher.load_state_dict({k: v for k, v in dense_state.items()}, strict=False)
            rec = recover(lm.model, proto.calib, teacher, rc.loss, rc.steps, rc.lr, rc.batch_size,
                          progress=cfg.progress, feature_weight=rc.feature_weight, kd_weight=rc.kd_weight,
                          kd_temperature=rc.kd_temperature)
            del teacher
            row["recovery"] = rec.to_dict()
            row["perplexity_pruned"] = row["perplexity"]
            row["perplexity"] = ppl()
        if writer and (cfg.save if r.save is None else r.save):
            folder = run_dir / (f"{i:02d}-{r.label().replace(' ', '-').replace('%', 'pct').replace(':', 'of')}"
                                if many else "")
            row["saved_hf"] = str(save_hf(lm.model, lm.tokenizer, folder / "model"))
            if "structure" not in rep.info:  # a smaller dense model has no masks to pack
                row["saved_sparse"] = str(save_sparse(lm.model, folder / "sparse.safetensors",
                                                      extra={"method": r.algorithm, "pattern": r.pattern}))
            atomic.write_text(folder / "sparsity.md", rep.to_markdown() + "\n")
        row["layers"] = rep.to_dict()["layers"]
        rows.append(row)
        emit()
    if cfg.plot and rows and writer:
        title = f"{cfg.model}: perplexity on {proto.fingerprint['eval_source']}"
        plot_perplexity(rows, run_dir / "perplexity.png", title)
        out["plot"] = str(run_dir / "perplexity.png")
    emit()
    out["table_markdown"] = table_markdown(rows)
    return out


def _maybe_offloaded(cfg: PruneLLMConfig, run_dir: Path) -> dict[str, Any] | None:
    """Prune block by block when ``offload`` is ``disk``, or ``auto`` and the model would not fit."""
    from transformers import AutoTokenizer

    from sparsecraft.data.text import build_protocol
    from sparsecraft.jobs.prune_offloaded import run_offloaded
    from sparsecraft.models.sources import resolve_model_dir
    from sparsecraft.oneshot.onloaded import decide_offload

    path = resolve_model_dir(cfg.model)
    d = cfg.data
    proto = build_protocol(AutoTokenizer.from_pretrained(str(path)), d.calib, d.eval, d.n_calib, d.n_eval, d.seq_len,
                           d.seed)
    mode = decide_offload(path, cfg.offload, proto.calib, cfg.batch_size)
    return run_offloaded(cfg, run_dir, path, proto, mode) if mode.startswith("disk") else None


@JOBS.register("prune-llm")
class PruneLLM(Job):
    """One-shot prune a language model and compare perplexities."""

    Config = PruneLLMConfig

    def run(self, config: PruneLLMConfig, run_dir: Path) -> dict[str, Any]:
        return run_prune_llm(config, run_dir)
