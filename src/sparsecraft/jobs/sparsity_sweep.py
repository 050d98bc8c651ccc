"""Job ``sparsity-sweep``: the essential-sparsity curve of a language model or an encoder.

    job: sparsity-sweep
    model: all-minilm-l6-v2        # or smollm2-135m, or a local HF directory
    criterion: magnitude           # or: criterion wanda / method sparsegpt (with calibration text)
    distribution: global           # one |w| ranking over all block Linear weights
    sparsities: [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    text: shakespeare

Metric (``metric: auto``): perplexity on the evaluation windows for a causal LM; for an
encoder, the mean cosine similarity of mean-pooled sentence embeddings to the dense model's on
a sample of ``n_sentences`` lines of the text. Writes ``sweep.json``, ``sweep.md`` (rewritten
after every point) and ``sweep.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, field_validator, model_validator

from sparsecraft import atomic
from sparsecraft.errors import SparsecraftError
from sparsecraft.jobs.prune_config import check_pattern_spec
from sparsecraft.jobs.recipe import JOBS, Job, OutputConfig, Strict, regex_list_validator

DEFAULT_SPARSITIES = [round(0.1 * i, 1) for i in range(10)]


class SweepConfig(Strict):
    model: str = "all-minilm-l6-v2"
    method: str | None = None  #: a one-shot method (sparsegpt); None = prune by ``criterion``
    criterion: str | None = None  #: default magnitude (wanda needs calibration text)
    distribution: str = "global"  #: global (data-free criteria only), uniform, erk, owl
    pattern: str = "unstructured"
    sparsities: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(DEFAULT_SPARSITIES, min_length=1)
    metric: str = "auto"  #: auto, perplexity, embedding
    text: str = "shakespeare"  #: evaluation text (and calibration text for wanda/sparsegpt)
    n_calib: int = Field(32, ge=0)
    n_eval: int = Field(16, ge=1)
    seq_len: int = Field(512, ge=2)
    n_sentences: int = Field(256, ge=1)
    max_length: int = Field(128, ge=8)
    tolerance: float = Field(0.01, ge=0.0)
    targets: list[str] | None = None
    ignore: list[str] | None = None
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    output: OutputConfig = OutputConfig()

    _layer_rules = regex_list_validator("targets", "ignore")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return check_pattern_spec(v)

    @model_validator(mode="after")
    def _choices(self) -> SweepConfig:
        from sparsecraft.criteria import CRITERIA
        from sparsecraft.distributions import DISTRIBUTIONS
        from sparsecraft.oneshot.base import ONESHOT

        choices = {"method": (ONESHOT, True), "criterion": (CRITERIA, True), "distribution": (DISTRIBUTIONS, False)}
        for key, (registry, optional) in choices.items():
            value = getattr(self, key)
            if (value is None and not optional) or (value is not None and value.lower() not in registry):
                raise ValueError(f"{key}: unknown {registry.kind} {value!r}; allowed: {', '.join(registry.names())}")
        if self.metric not in ("auto", "perplexity", "embedding"):
            raise ValueError(f"metric: unknown metric {self.metric!r}; allowed: auto, perplexity, embedding")
        if self.distribution == "global" and (self.method is not None or (self.criterion or "magnitude") == "wanda"):
            raise ValueError("distribution: 'global' ranks every layer at once, which block-by-block pruning "
                             "cannot do; use uniform, erk or owl with wanda / sparsegpt")
        return self


def _label(cfg: SweepConfig) -> str:
    return cfg.method or cfg.criterion or "magnitude"


def _pruner(cfg: SweepConfig, calib: torch.Tensor | None):
    from sparsecraft.oneshot.api import prune

    def prune_fn(model: torch.nn.Module, s: float) -> float:
        rep = prune(model, s, method=cfg.method, criterion=cfg.criterion, pattern=cfg.pattern,
                    distribution=cfg.distribution, targets=cfg.targets, ignore=cfg.ignore, calib=calib,
                    progress=False)
        return rep.sparsity

    return prune_fn


def run_sweep_job(cfg: SweepConfig, run_dir: Path) -> dict[str, Any]:
    from sparsecraft.analysis.sparsity_sweep import run_sweep
    from sparsecraft.data.text import build_protocol, sentences
    from sparsecraft.evaluation.embedding import embedding_similarity, encode_batches, sentence_embeddings
    from sparsecraft.evaluation.perplexity import perplexity
    from sparsecraft.models import load_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    lm = load_model(cfg.model)
    metric = cfg.metric
    if metric == "auto":
        metric = "perplexity" if lm.kind == "causal-lm" else "embedding"
    if metric not in ("perplexity", "embedding"):
        raise SparsecraftError(f"metric {cfg.metric!r}; allowed: auto, perplexity, embedding")
    calib = None
    info: dict[str, Any] = {"model": cfg.model, "metric": metric}
    calibrated = _label(cfg) != "magnitude" or cfg.distribution == "owl"
    if metric == "perplexity" or calibrated:
        proto = build_protocol(lm.tokenizer, cfg.text, None, cfg.n_calib if calibrated else 0, cfg.n_eval, cfg.seq_len)
        calib, info["protocol"] = proto.calib, proto.fingerprint
    if metric == "perplexity":
        def evaluate(model: torch.nn.Module) -> float:
            return perplexity(model, proto.eval, progress=False)

        name, higher = "perplexity", False
    else:
        batches = encode_batches(lm.tokenizer, sentences(cfg.text, cfg.n_sentences), max_length=cfg.max_length)
        reference = sentence_embeddings(lm.model, batches)
        info["n_sentences"] = int(reference.shape[0])

        def evaluate(model: torch.nn.Module) -> float:
            return embedding_similarity(reference, sentence_embeddings(model, batches))

        name, higher = "embedding cosine similarity", True

    def write(result) -> None:
        doc = {**info, "method": cfg.method, "criterion": cfg.criterion, "distribution": cfg.distribution,
               **result.to_dict()}
        atomic.write_json(run_dir / "sweep.json", doc)
        atomic.write_text(run_dir / "sweep.md", result.to_markdown() + "\n")

    result = run_sweep(lm.model, cfg.sparsities, _pruner(cfg, calib), evaluate, name, higher, cfg.tolerance,
                       cfg.progress, on_point=write)
    write(result)
    title = f"{cfg.model}: {_label(cfg)} ({cfg.distribution}) sweep"
    plot = result.plot(run_dir / "sweep.png", title)
    return {**info, "method": cfg.method, "criterion": cfg.criterion, "distribution": cfg.distribution,
            **result.to_dict(), "plot": str(plot)}


@JOBS.register("sparsity-sweep")
class SparsitySweep(Job):
    """Essential-sparsity curve: one-shot prune at many sparsities, tolerance point and knee."""

    Config = SweepConfig

    def run(self, config: SweepConfig, run_dir: Path) -> dict[str, Any]:
        return run_sweep_job(config, run_dir)
