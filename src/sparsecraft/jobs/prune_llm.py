"""Job ``prune-llm``: one-shot prune a language model (one or several configurations), measure
perplexity before/after, and write the pruned model, a table and a plot.

    job: prune-llm
    model: smollm2-135m            # built-in name or a local Hugging Face directory
    data: {calib: shakespeare, n_calib: 32, n_eval: 16, seqlen: 512}
    runs:
      - {method: sparsegpt, sparsity: 0.5, pattern: 2:4}
    save: true                     # pruned HF directory + sparse checkpoint per run

Outputs in the run folder: ``results.json`` and ``table.md`` (rewritten after every
configuration, so a partial table exists if the run is stopped), ``perplexity.png``, and with
``save`` a folder per run holding ``model/`` (``from_pretrained``-loadable, tokenizer included),
``sparse.safetensors`` (:func:`sparsecraft.save`, masks as bits) and ``sparsity.md``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from sparsecraft import atomic
from sparsecraft.errors import SparsecraftError
from sparsecraft.formats.checkpoint import save as save_sparse
from sparsecraft.jobs.recipe import JOBS, Job, OutputConfig, Strict
from sparsecraft.masks import MASK_SUFFIX, remove_masks

METHODS = ("magnitude", "wanda", "sparsegpt")


class DataConfig(Strict):
    calib: str = "shakespeare"  #: text file, folder of .txt, or built-in name
    eval: str | None = None  #: default: the calibration source (its last 10%)
    n_calib: int = Field(32, ge=0)
    n_eval: int | None = Field(16, ge=1)
    seqlen: int = Field(512, ge=2)
    seed: int = 0


class RunConfig(Strict):
    method: str
    sparsity: float = Field(0.5, ge=0.0, le=1.0)
    pattern: str = "unstructured"
    owl: bool = False
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    name: str | None = None
    save: bool | None = None  #: save this run's model (None = the job's ``save``)

    def label(self) -> str:
        if self.name:
            return self.name
        amount = self.pattern if ":" in self.pattern else f"{round(self.sparsity * 100)}%"
        return f"{self.method}{'+owl' if self.owl else ''} {amount}"


class RecoveryConfig(Strict):
    steps: int = Field(0, ge=0)  #: 0 = no recovery fine-tune
    loss: str = "squarehead"  #: squarehead, lm, or lm+squarehead (task + feature_weight x SquareHead)
    lr: float = 1e-5
    batch_size: int = Field(1, ge=1)
    feature_weight: float = Field(1.0, ge=0.0)  #: lambda of the SquareHead term
    kd_weight: float = Field(0.0, ge=0.0)  #: > 0 adds logit distillation
    kd_temperature: float = Field(1.0, gt=0.0)


class PruneLLMConfig(Strict):
    model: str = "smollm2-135m"
    data: DataConfig = DataConfig()
    runs: list[RunConfig] = [RunConfig(method="sparsegpt")]
    dense: bool = True  #: evaluate the dense model first
    targets: list[str] | None = None
    ignore: list[str] | None = None
    batch_size: int = Field(8, ge=1)  #: calibration windows per forward
    eval_batch_size: int = Field(2, ge=1)
    recovery: RecoveryConfig = RecoveryConfig()
    save: bool = True
    plot: bool = True
    threads: int | None = None
    progress: bool = True
    output: OutputConfig = OutputConfig()


def _atomic_json(path: Path, obj: Any) -> None:
    atomic.write_json(path, obj)


def save_hf(model: torch.nn.Module, tokenizer: Any, dest: Path) -> Path:
    """Write a ``from_pretrained``-loadable copy (masks dropped, zeros kept), atomically."""
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(MASK_SUFFIX)}
    with atomic.directory(dest) as tmp:
        model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return dest


def table_markdown(rows: list[dict[str, Any]], extra: dict[str, str] | None = None) -> str:
    """The results table; ``extra`` maps a column title to a row key."""
    extra = extra or {}
    head = ["config", "perplexity", "prune wall time (s)", "peak RSS (MB)", "true sparsity", *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["config"],
            f"{r['perplexity']:.2f}",
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
    from sparsecraft.evaluation.perplexity import perplexity
    from sparsecraft.models import load_model
    from sparsecraft.oneshot import prune_model
    from sparsecraft.oneshot.memory import PeakRSS
    from sparsecraft.oneshot.recovery import recover

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    for r in cfg.runs:
        if r.method not in METHODS:
            raise SparsecraftError(f"runs: unknown method {r.method!r}; allowed: {', '.join(METHODS)}")
    lm = load_model(cfg.model, kind="causal-lm")
    if lm.tokenizer is None:
        raise SparsecraftError(f"model {cfg.model!r} has no tokenizer files")
    d = cfg.data
    proto = build_protocol(lm.tokenizer, d.calib, d.eval, d.n_calib, d.n_eval, d.seqlen, d.seed)
    dense_state = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"model": cfg.model, "model_dir": str(lm.path), "protocol": proto.fingerprint, "rows": rows}

    def emit() -> None:
        _atomic_json(run_dir / "results.json", out)
        (run_dir / "table.md").write_text(table_markdown(rows) + "\n")
        if on_row is not None:
            on_row(rows)

    def ppl() -> float:
        return perplexity(lm.model, proto.eval, cfg.eval_batch_size, cfg.progress)

    if cfg.dense:
        t0 = time.perf_counter()
        rows.append({"config": "dense", "method": "dense", "perplexity": ppl(), "wall_time_s": None,
                     "peak_rss_mb": None, "true_sparsity": 0.0, "eval_time_s": round(time.perf_counter() - t0, 2)})
        emit()
    many = len(cfg.runs) > 1
    for i, r in enumerate(cfg.runs):
        if i:
            remove_masks(lm.model)
            lm.model.load_state_dict(dense_state)
        with PeakRSS() as mem:
            res = prune_model(lm.model, proto.calib, r.method, r.sparsity, r.pattern, owl=r.owl, owl_m=r.owl_m,
                              owl_lambda=r.owl_lambda, targets=cfg.targets, ignore=cfg.ignore,
                              batch_size=cfg.batch_size, progress=cfg.progress)
        row = {"config": r.label(), **res.to_dict(), "peak_rss_mb": round(mem.peak_mb, 1)}
        t0 = time.perf_counter()
        row["perplexity"] = ppl()
        row["eval_time_s"] = round(time.perf_counter() - t0, 2)
        if cfg.recovery.steps:
            teacher = copy.deepcopy(lm.model)
            teacher.load_state_dict({k: v for k, v in dense_state.items()}, strict=False)
            rc = cfg.recovery
            rec = recover(lm.model, proto.calib, teacher, rc.loss, rc.steps, rc.lr, rc.batch_size,
                          progress=cfg.progress, feature_weight=rc.feature_weight, kd_weight=rc.kd_weight,
                          kd_temperature=rc.kd_temperature)
            del teacher
            row["recovery"] = rec.to_dict()
            row["perplexity_pruned"] = row["perplexity"]
            row["perplexity"] = ppl()
        if cfg.save if r.save is None else r.save:
            folder = run_dir / (f"{i:02d}-{r.label().replace(' ', '-').replace('%', 'pct').replace(':', 'of')}"
                                if many else "")
            row["saved_hf"] = str(save_hf(lm.model, lm.tokenizer, folder / "model"))
            row["saved_sparse"] = str(save_sparse(lm.model, folder / "sparse.safetensors",
                                                  extra={"method": r.method, "pattern": res.pattern}))
            (folder / "sparsity.md").write_text(res.report.to_markdown() + "\n")
        row["layers"] = res.report.to_dict()["layers"]
        rows.append(row)
        emit()
    if cfg.plot and rows:
        title = f"{cfg.model}: perplexity on {proto.fingerprint['eval_source']}"
        plot_perplexity(rows, run_dir / "perplexity.png", title)
        out["plot"] = str(run_dir / "perplexity.png")
    emit()
    out["table_markdown"] = table_markdown(rows)
    return out


@JOBS.register("prune-llm")
class PruneLLM(Job):
    """One-shot prune a language model and compare perplexities."""

    Config = PruneLLMConfig

    def run(self, config: PruneLLMConfig, run_dir: Path) -> dict[str, Any]:
        return run_prune_llm(config, run_dir)
