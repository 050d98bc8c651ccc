"""Job ``lm-train``: train a small causal LM (dense, MoE, Engram, STEM -- :mod:`sparsecraft.moe`)
on a text with a fixed tokenizer; validation loss, expert-load statistics, checkpoints, bit-exact
resume, plots.

    job: lm-train
    data: {source: shakespeare, tokenizer: byte}      # or tokenizer: smollm2-135m / a HF folder
    model: {d_model: 128, n_layers: 4, n_heads: 4, d_ff: 512, ffn: moe,
            moe: {n_experts: 8, expert_dim: 512, top_k: 1, aux_loss_coef: 0.01}}
    top_k_schedule: null        # progressive sparsification (sparsecraft.moe.schedule), e.g.
                                # {layers: {"0": [[0, 4], [300, 1]], default: 1}}
    steps: 600
    batch_size: 16
    seq_len: 128
    optimizer: {lr: 3.0e-3, warmup_steps: 50, min_lr_ratio: 0.1, weight_decay: 0.1, grad_clip: 1.0}
    eval: {every: 100, windows: 64}
    checkpoint: {every: 200}

Data: the source's text (files sorted by name, joined by a blank line), tokenized once without
special tokens; the first ``1 - val_fraction`` of the tokens train, the rest validates (the first
``eval.windows`` non-overlapping ``seq_len`` windows). ``vocab_size`` comes from the tokenizer.
Training runs on the library's one loop (:func:`sparsecraft.training.causal_lm.train_lm` ->
:func:`sparsecraft.training.loop.train_steps`): batches and learning rates are pure functions of
(seed, step), so ``--resume`` continues bit for bit from the last checkpoint (model with router
biases, AdamW state); only progress/threads/checkpoint/stop_after/output may differ on resume.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator

from sparsecraft.errors import SparsecraftError
from sparsecraft.jobs.recipe import JOBS, Job, OutputConfig, Strict
from sparsecraft.jobs.train import SEED, check_resume_settings, preflight_checkpoint
from sparsecraft.moe.model import SparseLM, SparseLMConfig, save_lm
from sparsecraft.moe.schedule import TopKSchedule, apply_top_k
from sparsecraft.moe.stats import expert_load, moe_layers, reset_expert_load
from sparsecraft.training.causal_lm import (
    BYTE,
    LMTrainSettings,
    count_parameters,
    evaluate_lm,
    make_lm_optimizer,
    router_losses,
    split_tokens,
    text_tokens,
    train_lm,
)
from sparsecraft.training.loop import StepRun, resume_steps
from sparsecraft.training.state import flatten_settings


class LMDataConfig(Strict):
    source: str = "shakespeare"  #: built-in text name, a text file, or a folder of *.txt
    tokenizer: str = BYTE  #: byte (256 ids) | smollm2-135m | a Hugging Face model/tokenizer folder
    val_fraction: float = Field(0.1, gt=0, lt=0.5)


class LMOptimizerConfig(Strict):
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)


class LMEvalConfig(Strict):
    every: int = Field(100, ge=0)  #: evaluate every this many steps (0 = only at the end)
    windows: int = Field(64, ge=1)  #: validation windows of seq_len tokens
    batch_size: int = Field(16, ge=1)


class LMCheckpointConfig(Strict):
    every: int = Field(0, ge=0)  #: steps between checkpoints (0 = only at the end)


class LMTrainJobConfig(Strict):
    data: LMDataConfig = LMDataConfig()
    model: dict[str, Any] = {}
    top_k_schedule: Any = None
    steps: int = Field(600, ge=1)
    batch_size: int = Field(16, ge=1)
    seq_len: int = Field(128, ge=2)
    optimizer: LMOptimizerConfig = LMOptimizerConfig()
    eval: LMEvalConfig = LMEvalConfig()
    checkpoint: LMCheckpointConfig = LMCheckpointConfig()
    seed: int = SEED
    device: str = "cpu"
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    resume: bool = False
    stop_after: int | None = Field(None, ge=1)  #: stop after this many steps (as if interrupted)
    output: OutputConfig = OutputConfig()

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "cpu" and not v.startswith("cuda"):
            raise ValueError(f"device must be cpu or cuda[:n], got {v!r}")
        return v

    @model_validator(mode="after")
    def _model(self) -> LMTrainJobConfig:
        if "vocab_size" in self.model:
            raise ValueError("model.vocab_size comes from the tokenizer (data.tokenizer); remove it")
        try:
            cfg = model_config(self, vocab_size=256 if self.data.tokenizer == BYTE else 2**31 - 1)
            if cfg.max_seq_len < self.seq_len:
                raise SparsecraftError(f"model.max_seq_len={cfg.max_seq_len} is shorter than seq_len={self.seq_len}")
            if self.top_k_schedule is not None:
                check_schedule(self.top_k_schedule, cfg, self.steps)
        except SparsecraftError as e:
            raise ValueError(str(e)) from None
        return self


def model_config(config: LMTrainJobConfig, vocab_size: int) -> SparseLMConfig:
    """The recipe's model section with the tokenizer's vocabulary size and max_seq_len >= seq_len."""
    d = {"max_seq_len": config.seq_len, **config.model, "vocab_size": vocab_size}
    return SparseLMConfig.from_dict(d)


def check_schedule(spec: Any, cfg: SparseLMConfig, steps: int) -> TopKSchedule:
    kinds = cfg.ffn_kinds()
    n_moe = kinds.count("moe")
    if n_moe == 0:
        raise SparsecraftError("top_k_schedule needs MoE layers (model.ffn: moe)")
    return TopKSchedule(spec, n_moe, int(cfg.moe["n_experts"]), steps, int(cfg.moe.get("top_k", 1)))


#: keys that may change on --resume (how a run is run or reported, not what it computes)
RESUME_MAY_CHANGE = ("progress", "threads", "checkpoint", "stop_after", "output", "resume")


def run_settings(config: LMTrainJobConfig) -> dict[str, Any]:
    flat = flatten_settings(config.model_dump(mode="json"))
    return {k: v for k, v in flat.items() if not any(k == m or k.startswith(m + ".") for m in RESUME_MAY_CHANGE)}


@JOBS.register("lm-train")
class LMTrainJob(Job):
    """Train a small dense / MoE / Engram / STEM causal LM with eval, checkpoints, resume, plots."""

    Config = LMTrainJobConfig

    def preflight(self, config: LMTrainJobConfig, run_dir: Path) -> None:
        preflight_checkpoint(run_dir, config.resume, run_settings(config))

    def run(self, config: LMTrainJobConfig, run_dir: Path) -> dict[str, Any]:
        if config.threads:
            torch.set_num_threads(config.threads)
        self.preflight(config, run_dir)
        tokens, vocab, tok = text_tokens(config.data.source, config.data.tokenizer)
        train_tokens, val = split_tokens(tokens, config.data.val_fraction, config.seq_len, config.eval.windows)
        cfg = model_config(config, vocab)
        compression = None
        if cfg.engram is not None:
            from sparsecraft.moe.engram_hash import byte_compression, tokenizer_compression

            compression = byte_compression() if tok is None else tokenizer_compression(tok)
        torch.manual_seed(config.seed)
        model = SparseLM(cfg, engram_compression=compression).to(config.device)
        o = config.optimizer
        s = LMTrainSettings(config.steps, config.batch_size, config.seq_len, o.lr, o.min_lr_ratio, o.warmup_steps,
                            o.weight_decay, o.beta1, o.beta2, o.grad_clip, config.seed)
        opt = make_lm_optimizer(model, s)
        sched = check_schedule(config.top_k_schedule, cfg, s.steps) if config.top_k_schedule is not None else None
        ckpt, settings = run_dir / "checkpoint", run_settings(config)
        run = StepRun()
        if config.resume:
            run, extra = resume_steps(ckpt, model, opt)
            check_resume_settings(extra.get("settings"), settings, ckpt)
        start, top_k = run.step, [None]

        def before_step(step: int) -> None:
            top_k[0] = apply_top_k(model, sched, step) if sched is not None else None

        def evaluate(step: int) -> dict[str, Any]:
            rl = router_losses(model)  # of the last training step, before the validation forwards
            reset_expert_load(model)
            val_loss = evaluate_lm(model, val, config.eval.batch_size)
            loads = {ld.layer: ld for ld in expert_load(model)}  # of the validation tokens
            return {"val_loss": val_loss, **({"top_k": top_k[0]} if top_k[0] is not None else {}),
                    **({"router_losses": rl} if rl else {}),
                    "load_cv": {n: ld.cv for n, ld in loads.items()},
                    "load_max": {n: ld.max_load for n, ld in loads.items()},
                    "dead_experts": {n: ld.dead for n, ld in loads.items()}}  # fmt: skip

        run = train_lm(model, opt, train_tokens, s, evaluate=evaluate, eval_every=config.eval.every, run=run,
                       checkpoint=ckpt, checkpoint_every=config.checkpoint.every, settings=settings,
                       stop_after=config.stop_after, before_step=before_step, progress=config.progress)
        resumed = {"resumed_from_step": start} if config.resume else {}
        if run.stopped:
            return {"stopped_after_step": run.step, "curves": run.curves, "final": None, **resumed}
        return {**self._finish(model, run_dir, run, config), **resumed}

    @staticmethod
    def _finish(model: SparseLM, run_dir: Path, run: StepRun, config: LMTrainJobConfig) -> dict[str, Any]:
        from sparsecraft.training.lm_plots import plot_expert_load, plot_lm_curves

        save_lm(model.cpu(), run_dir / "model.safetensors")
        plots = [str(plot_lm_curves(run.curves, run_dir / "curves.png"))]
        if moe_layers(model):
            plots.append(str(plot_expert_load(run.curves, run_dir / "expert_load.png")))
        final = run.curves[-1]
        counts = count_parameters(model, config.seq_len)
        return {
            "final": {"val_loss": final["val_loss"], "val_ppl": math.exp(final["val_loss"]),
                      "train_loss": final["train_loss"], "tokens_per_s": run.throughput(),
                      "params": counts["total"], "active_params": counts["active"],
                      "flops_per_token": counts["flops_per_token"],
                      "expert_load": [ld.to_dict() for ld in expert_load(model)]},
            "curves": run.curves, "plots": plots, "model": str(run_dir / "model.safetensors"),
        }  # fmt: skip
