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
Training batches and learning rates are pure functions of (seed, step)
(:mod:`sparsecraft.training.lm_loop`), so ``--resume`` continues bit for bit from the last
checkpoint (model with router biases, AdamW state); only progress/threads/checkpoint/stop_after/
output may differ on resume.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator
from tqdm.auto import tqdm

from sparsecraft import atomic
from sparsecraft.errors import SparsecraftError
from sparsecraft.jobs.recipe import JOBS, Job, OutputConfig, Strict
from sparsecraft.jobs.train import SEED, check_resume_settings
from sparsecraft.moe.model import SparseLM, SparseLMConfig, save_lm
from sparsecraft.moe.schedule import TopKSchedule, apply_top_k
from sparsecraft.moe.stats import expert_load, moe_layers, reset_expert_load
from sparsecraft.training.lm_loop import (
    LMTrainSettings,
    count_parameters,
    evaluate_lm,
    lm_batch,
    lm_lr,
    make_lm_optimizer,
    router_losses,
    train_step,
)
from sparsecraft.training.state import (
    STATE_FILE,
    flatten_settings,
    load_training_state,
    read_training_state,
    save_training_state,
)

BYTE = "byte"


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


def load_tokens(data: LMDataConfig) -> tuple[torch.Tensor, int, Any]:
    """(token ids of the whole text, vocabulary size, tokenizer or None for bytes)."""
    from sparsecraft.data.text import load_text, tokenize

    text = load_text(data.source)
    if data.tokenizer == BYTE:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long(), 256, None
    from sparsecraft.models.sources import require_transformers, resolve_model_dir

    require_transformers()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_model_dir(data.tokenizer)))
    return tokenize(text, tok), len(tok), tok


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
        ckpt = run_dir / "checkpoint"
        atomic.recover_directory(ckpt)
        if config.resume:
            if not (ckpt / STATE_FILE).is_file():
                raise SparsecraftError(f"--resume: no checkpoint in {str(ckpt)!r}; run without --resume first")
            _, doc = read_training_state(ckpt)
            check_resume_settings(doc.get("extra", {}).get("settings"), run_settings(config), ckpt)
        elif ckpt.exists():
            raise SparsecraftError(f"{str(run_dir)!r} holds the checkpoint of an earlier run: continue it with "
                                   "--resume, or choose another folder")

    def run(self, config: LMTrainJobConfig, run_dir: Path) -> dict[str, Any]:
        if config.threads:
            torch.set_num_threads(config.threads)
        self.preflight(config, run_dir)
        tokens, vocab, tok = load_tokens(config.data)
        cut = int(tokens.numel() * (1 - config.data.val_fraction))
        train_tokens, val_tokens = tokens[:cut], tokens[cut:]
        n_val = min(config.eval.windows, val_tokens.numel() // config.seq_len)
        if n_val < 1:
            raise SparsecraftError(f"the validation part has {val_tokens.numel()} tokens, less than one window")
        val = val_tokens[: n_val * config.seq_len].reshape(n_val, config.seq_len)
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
        step, curves, acc = 0, [], {"loss": 0.0, "n": 0, "train_s": 0.0, "tokens": 0}
        if config.resume:
            extra = load_training_state(ckpt, model, opt, None)
            check_resume_settings(extra.get("settings"), settings, ckpt)
            step, curves, acc = int(extra["step"]), list(extra["curves"]), dict(extra["acc"])
        start = step
        bar = tqdm(total=s.steps, initial=step, desc="lm-train", disable=not config.progress, leave=False)
        try:
            while step < s.steps:
                ks = apply_top_k(model, sched, step) if sched is not None else None
                x, y = lm_batch(train_tokens, step, s)
                t0 = time.perf_counter()
                logs = train_step(model, opt, x.to(config.device), y.to(config.device), lm_lr(step, s), s.grad_clip)
                if config.device.startswith("cuda"):
                    torch.cuda.synchronize()
                acc["train_s"] += time.perf_counter() - t0
                acc["loss"] += logs["loss"]
                acc["n"] += 1
                acc["tokens"] += x.numel()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}")
                last = step == s.steps
                if last or (config.eval.every and step % config.eval.every == 0):
                    curves.append(self._evaluate(model, val, config, step, s, acc, ks, router_losses(model)))
                    acc["loss"], acc["n"] = 0.0, 0
                stop = config.stop_after is not None and step >= start + config.stop_after and not last
                if last or stop or (config.checkpoint.every and step % config.checkpoint.every == 0):
                    save_training_state(ckpt, model, opt, None,
                                        {"step": step, "curves": curves, "acc": acc, "settings": settings})
                if stop:
                    return {"stopped_after_step": step, "curves": curves, "final": None,
                            **({"resumed_from_step": start} if config.resume else {})}
        finally:
            bar.close()
        return self._finish(model, run_dir, curves, acc, config, start)

    @staticmethod
    def _evaluate(model: SparseLM, val: torch.Tensor, config: LMTrainJobConfig, step: int, s: LMTrainSettings,
                  acc: dict[str, Any], ks: list[int] | None, rl: dict[str, float]) -> dict[str, Any]:
        reset_expert_load(model)
        val_loss = evaluate_lm(model, val, config.eval.batch_size)
        loads = {ld.layer: ld for ld in expert_load(model)}
        return {"step": step, "train_loss": acc["loss"] / max(acc["n"], 1), "val_loss": val_loss,
                "lr": lm_lr(step - 1, s), "tokens_per_s": acc["tokens"] / max(acc["train_s"], 1e-9),
                **({"top_k": ks} if ks is not None else {}), **({"router_losses": rl} if rl else {}),
                "load_cv": {n: ld.cv for n, ld in loads.items()},
                "load_max": {n: ld.max_load for n, ld in loads.items()},
                "dead_experts": {n: ld.dead for n, ld in loads.items()}}  # fmt: skip

    @staticmethod
    def _finish(model: SparseLM, run_dir: Path, curves: list[dict[str, Any]], acc: dict[str, Any],
                config: LMTrainJobConfig, start: int) -> dict[str, Any]:
        from sparsecraft.training.lm_plots import plot_expert_load, plot_lm_curves

        save_lm(model.cpu(), run_dir / "model.safetensors")
        plots = [str(plot_lm_curves(curves, run_dir / "curves.png"))]
        if moe_layers(model):
            plots.append(str(plot_expert_load(curves, run_dir / "expert_load.png")))
        final = curves[-1]
        counts = count_parameters(model, config.seq_len)
        import math

        return {
            "final": {"val_loss": final["val_loss"], "val_ppl": math.exp(final["val_loss"]),
                      "train_loss": final["train_loss"], "tokens_per_s": acc["tokens"] / max(acc["train_s"], 1e-9),
                      "params": counts["total"], "active_params": counts["active"],
                      "flops_per_token": counts["flops_per_token"],
                      "expert_load": [ld.to_dict() for ld in expert_load(model)]},
            "curves": curves, "plots": plots, "model": str(run_dir / "model.safetensors"),
            **({"resumed_from_step": start} if config.resume else {}),
        }  # fmt: skip
