"""Job ``sparsity-sweep``: the essential-sparsity curve of a language model or an encoder.

    job: sparsity-sweep
    model: all-minilm-l6-v2        # or smollm2-135m, or a local HF directory
    method: magnitude
    distribution: global           # one |w| ranking over all block Linear weights
    sparsities: [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    text: shakespeare

Metric (``metric: auto``): perplexity on the evaluation windows for a causal LM; for an
encoder, the mean cosine similarity of mean-pooled sentence embeddings to the dense model's on
a sample of ``n_sentences`` lines of the text. Writes ``sweep.json``, ``sweep.md`` (rewritten
after every point) and ``sweep.png``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from sparsecraft.errors import SparsecraftError
from sparsecraft.jobs.recipe import JOBS, Job, OutputConfig, Strict

DEFAULT_SPARSITIES = [round(0.1 * i, 1) for i in range(10)]


class SweepConfig(Strict):
    model: str = "all-minilm-l6-v2"
    method: str = "magnitude"
    distribution: str = "global"  #: global (magnitude only) or uniform
    pattern: str = "unstructured"
    sparsities: list[float] = DEFAULT_SPARSITIES
    metric: str = "auto"  #: auto, perplexity, embedding
    text: str = "shakespeare"  #: evaluation text (and calibration text for wanda/sparsegpt)
    n_calib: int = Field(32, ge=0)
    n_eval: int = Field(16, ge=1)
    seqlen: int = Field(512, ge=2)
    n_sentences: int = Field(256, ge=1)
    max_length: int = Field(128, ge=8)
    tolerance: float = Field(0.01, ge=0.0)
    targets: list[str] | None = None
    ignore: list[str] | None = None
    threads: int | None = None
    progress: bool = True
    output: OutputConfig = OutputConfig()


def _pruner(cfg: SweepConfig, calib: torch.Tensor | None):
    from sparsecraft.oneshot import find_blocks, prune_model
    from sparsecraft.pruning import prune

    if cfg.distribution not in ("global", "uniform"):
        raise SparsecraftError(f"distribution {cfg.distribution!r}; allowed: global, uniform")
    if cfg.distribution == "global" and cfg.method != "magnitude":
        raise SparsecraftError("the global distribution ranks |w| across layers: use it with method magnitude")

    def prune_fn(model: torch.nn.Module, s: float) -> float:
        if cfg.distribution == "global":
            include = cfg.targets or [rf"^{re.escape(find_blocks(model).prefix)}\.\d+\."]
            rep = prune(model, s, cfg.pattern, "magnitude", "global", include=include, keep_dense=cfg.ignore)
            return rep.sparsity
        res = prune_model(model, calib, cfg.method, s, cfg.pattern, targets=cfg.targets, ignore=cfg.ignore,
                          progress=False)
        return res.report.sparsity

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
    if metric == "perplexity" or cfg.method != "magnitude":
        proto = build_protocol(lm.tokenizer, cfg.text, None, cfg.n_calib if cfg.method != "magnitude" else 0,
                               cfg.n_eval, cfg.seqlen)
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
        doc = {**info, "method": cfg.method, "distribution": cfg.distribution, **result.to_dict()}
        tmp = run_dir / ".sweep.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, run_dir / "sweep.json")
        (run_dir / "sweep.md").write_text(result.to_markdown() + "\n")

    result = run_sweep(lm.model, cfg.sparsities, _pruner(cfg, calib), evaluate, name, higher, cfg.tolerance,
                       cfg.progress, on_point=write)
    write(result)
    title = f"{cfg.model}: {cfg.method} ({cfg.distribution}) sweep"
    plot = result.plot(run_dir / "sweep.png", title)
    return {**info, "method": cfg.method, "distribution": cfg.distribution, **result.to_dict(), "plot": str(plot)}


@JOBS.register("sparsity-sweep")
class SparsitySweep(Job):
    """Essential-sparsity curve: one-shot prune at many sparsities, tolerance point and knee."""

    Config = SweepConfig

    def run(self, config: SweepConfig, run_dir: Path) -> dict[str, Any]:
        return run_sweep_job(config, run_dir)
