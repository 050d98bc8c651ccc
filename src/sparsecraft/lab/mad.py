"""MAD synthetic tasks: dense vs sparse (weights / MoE / attention) tiny decoders, same width.

Paper: "Mechanistic Design and Scaling of Hybrid Architectures" (Poli et al. 2024, papers.txt).
MAD trains small two-block models on six token-manipulation tasks (:mod:`sparsecraft.lab.mad_tasks`)
and reads which computational primitive each capability needs: in-context / fuzzy / noisy recall and
selective copying need global, content-dependent token mixing; compression needs the whole
sequence summarised in one position; memorisation needs channel-mixing capacity (facts stored in
the weights), which is where the paper's sparsely gated MoE channel mixers help.

Here one two-block :class:`~sparsecraft.moe.SparseLM` (RoPE attention, SwiGLU FFN, width
``d_model`` / ``d_ff``) is trained per task and variant, at equal width:

* ``dense`` -- the plain model;
* ``sparse-weights`` -- static sparse training (:func:`sparsecraft.attach`, method ``static``:
  random mask at initialisation, ERK distribution) of every block Linear at ``sparsity``;
* ``moe`` -- the FFNs replaced by :class:`~sparsecraft.moe.MoEFFN` with ``n_experts`` experts of
  width ``d_ff``, top-1 (same active width, ``n_experts`` x the FFN parameters);
* ``window-attention`` -- every query keeps only its last ``window`` keys (sliding window, MAD's
  "sliding-window attention" primitive);
* ``topk-attention`` -- every query keeps its top ``ceil((1 - attention_sparsity) n)`` causal keys by
  exact ``q . k`` (the project's :class:`~sparsecraft.attention.topk.TopKAttention`), in training too.

Compression uses MAD's auto-encoder read-out: the last position's hidden state plus a sinusoidal
position code goes through a two-layer GELU MLP and the LM head to rebuild every position.
Training minimises cross-entropy on the scored positions only (MAD's recall tasks train on every
next token) with the library's loop (:func:`sparsecraft.training.loop.run_steps`, AdamW, warmup +
cosine); accuracy is on freshly generated held-out sequences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.attention.topk import TopKAttention
from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int, fmt
from sparsecraft.lab.mad_tasks import IGNORE, TASKS, MADData, generate, scored_accuracy
from sparsecraft.moe.attention import CausalSelfAttention
from sparsecraft.moe.model import SparseLM, SparseLMConfig, aux_loss
from sparsecraft.training.loop import lr_at, run_steps, shuffled_batches

VARIANTS = ("dense", "sparse-weights", "moe", "window-attention", "topk-attention")

#: small task settings of the default run (MAD's benchmark baselines are in docs/lab.md)
DEFAULT_TASKS: dict[str, dict[str, Any]] = {
    "in-context-recall": {"vocab_size": 8, "seq_len": 16},
    "fuzzy-recall": {"vocab_size": 12, "seq_len": 24, "k_motif": 2, "v_motif": 2},
    "noisy-recall": {"vocab_size": 12, "seq_len": 16, "noise_vocab_size": 4, "frac_noise": 0.2},
    "selective-copying": {"vocab_size": 8, "seq_len": 16, "n_copy": 4},
    "compression": {"vocab_size": 8, "seq_len": 8},
    "memorisation": {"vocab_size": 258, "seq_len": 16},
}


def window_mask(length: int, window: int) -> torch.Tensor:
    """Bool (L, L): query i keeps key j iff ``i - window < j <= i`` (causal sliding window)."""
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    return (j <= i) & (j > i - window)


class MaskedSelfAttention(CausalSelfAttention):
    """:class:`CausalSelfAttention` whose causal mask is thinned: ``window`` (last ``window`` keys) or
    ``topk`` (the project's exact top-k keys per query); the dropped pairs get -inf before the softmax."""

    def __init__(self, d_model: int, n_heads: int, rope_theta: float, kind: str, *, window: int = 8,
                 sparsity: float = 0.75) -> None:
        super().__init__(d_model, n_heads, rope_theta)
        if kind not in ("window", "topk"):
            raise SparsecraftError(f"sparse attention kind must be window or topk, got {kind!r}")
        self.kind, self.window = kind, check_int("window", window, 1)
        self.selector = TopKAttention(sparsity)
        self.kept, self.causal = 0, 0  # (query, key) pairs kept / causal over the forwards so far

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x)
        if self.kind == "window":
            keep = window_mask(t, self.window).to(x.device).expand(b, self.n_heads, t, t)
        else:
            keep = self.selector.select(q.detach(), k.detach(), torch.arange(t, device=x.device), {})
        self.kept += int(keep.sum())
        self.causal += b * self.n_heads * t * (t + 1) // 2
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2)


def sincos_positions(length: int, dim: int) -> torch.Tensor:
    """(L, dim) fixed sinusoidal position code (Vaswani et al. 2017), the compression decoder's query."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    return torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=1)


class MADModel(nn.Module):
    """A :class:`SparseLM` returning per-position logits; with ``compress_len`` the logits of all
    ``compress_len`` positions are decoded from the last position alone (MAD's auto-encoder)."""

    def __init__(self, config: SparseLMConfig, compress_len: int | None = None) -> None:
        super().__init__()
        self.lm = SparseLM(config)
        self.compress_len = compress_len
        if compress_len is not None:
            d = config.d_model
            self.decoder = nn.Sequential(nn.RMSNorm(d), nn.Linear(d, d), nn.GELU(), nn.RMSNorm(d), nn.Linear(d, d),
                                         nn.GELU())
            self.register_buffer("positions", sincos_positions(compress_len, d), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.compress_len is None:
            return self.lm(ids).logits
        x = self.lm.embed_tokens(ids)
        for block in self.lm.layers:
            x = block(x, ids)
        code = self.lm.norm(x)[:, -1:, :]  # (b, 1, d): everything the model kept of the sequence
        return self.lm.lm_head(self.lm.norm(self.decoder(code + self.positions[: ids.shape[1]])))


def build_model(variant: str, vocab_size: int, seq_len: int, *, d_model: int, d_ff: int, n_heads: int,
                n_experts: int, window: int, attention_sparsity: float, compress: bool, seed: int) -> MADModel:
    """The two-block model of ``variant`` (weights start from ``seed``; sparse weights are attached later)."""
    if variant not in VARIANTS:
        raise SparsecraftError(f"unknown MAD variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    torch.manual_seed(seed)
    moe = variant == "moe"
    cfg = SparseLMConfig(vocab_size=vocab_size, d_model=d_model, n_layers=2, n_heads=n_heads, d_ff=d_ff,
                         max_seq_len=seq_len, ffn="moe" if moe else "dense", tie_embeddings=False,
                         moe={"n_experts": n_experts, "expert_dim": d_ff, "top_k": 1, "aux_loss_coef": 0.01}
                         if moe else {})
    model = MADModel(cfg, seq_len if compress else None)
    if variant.endswith("-attention"):
        for block in model.lm.layers:
            masked = MaskedSelfAttention(d_model, n_heads, cfg.rope_theta, variant.split("-")[0], window=window,
                                         sparsity=attention_sparsity)
            masked.load_state_dict(block.attn.state_dict())
            block.attn = masked
    return model


@torch.no_grad()
def evaluate(model: nn.Module, data: MADData, batch_size: int = 256) -> float:
    """Accuracy over every scored position of ``data``."""
    model.eval()
    hits, total = 0.0, 0
    for i in range(0, len(data.inputs), batch_size):
        y = data.targets[i : i + batch_size]
        n = int((y != IGNORE).sum())
        hits += scored_accuracy(model(data.inputs[i : i + batch_size]), y) * n
        total += n
    return hits / max(total, 1)


def train_and_test(task: str, variant: str, options: dict[str, Any], *, steps: int, n_train: int, n_test: int,
                   batch_size: int = 32, lr: float = 3e-3, d_model: int = 64, d_ff: int = 128, n_heads: int = 4,
                   n_experts: int = 4, sparsity: float = 0.75, window: int = 4, attention_sparsity: float = 0.75,
                   seed: int = 0) -> dict[str, Any]:
    """Train ``variant`` on ``n_train`` sequences of ``task`` for ``steps`` steps; held-out accuracy."""
    train = generate(task, n_train, seed=1000 + seed, **options)
    held = {"held_out": True} if task == "fuzzy-recall" else {}
    test = generate(task, n_test, seed=2000 + seed, **options, **held)
    vocab = options.get("vocab_size", 16)
    model = build_model(variant, vocab, train.inputs.shape[1], d_model=d_model, d_ff=d_ff, n_heads=n_heads,
                        n_experts=n_experts, window=window, attention_sparsity=attention_sparsity,
                        compress=task == "compression", seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    method = None
    if variant == "sparse-weights":
        from sparsecraft.methods.attach import attach

        method = attach(model, opt, method="static", sparsity=sparsity, distribution="erk",
                        targets=[r"^lm\.layers\."], total_steps=steps, seed=seed)
    per_epoch = -(-n_train // batch_size)

    def batch_at(t: int) -> torch.Tensor:
        return shuffled_batches(n_train, batch_size, seed, t // per_epoch)[t % per_epoch]

    def loss_of(m: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = m(train.inputs[idx])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), train.targets[idx].reshape(-1),
                               ignore_index=IGNORE)
        return loss + aux_loss(m), {"loss": loss.item()}

    run_steps(model, opt, batch_at, loss_of, start=0, end=steps, method=method, grad_clip=1.0,
              lr_fn=lambda t: lr_at(t, steps, lr, warmup=max(steps // 10, 1), min_ratio=0.1))
    if method is not None:
        method.finalize()
    blocks = [p for n, p in model.named_parameters() if n.startswith("lm.layers.") and p.dim() == 2]
    zeros = sum(int((p == 0).sum()) for p in blocks) / sum(p.numel() for p in blocks)
    attn = [b.attn for b in model.lm.layers if isinstance(b.attn, MaskedSelfAttention)]
    return {"train_acc": evaluate(model, train), "test_acc": evaluate(model, test), "block_zeros": zeros,
            "attention_kept": sum(a.kept for a in attn) / sum(a.causal for a in attn) if attn else 1.0,
            "params": sum(p.numel() for p in model.parameters()) - sum(int((p == 0).sum()) for p in blocks)}


def chance(task: str, options: dict[str, Any]) -> float:
    """Accuracy of guessing uniformly among the tokens a scored position can hold."""
    v = options.get("vocab_size", 16)
    words = {"in-context-recall": v, "noisy-recall": v - options.get("noise_vocab_size", 8),
             "fuzzy-recall": v - 1, "memorisation": v - 1}
    if task in words:
        return 1.0 / (words[task] - words[task] // 2)
    return 1.0 / (v - 2 if task == "selective-copying" else v - 1)


@EXPERIMENTS.register("mad")
class MADExperiment(Experiment):
    """The six MAD tasks x dense / sparse-weights / MoE / window / top-k attention, equal width."""

    paper = "Mechanistic Design and Scaling of Hybrid Architectures"
    claim = ("small synthetic token-manipulation tasks (recall, fuzzy / noisy recall, selective copying, "
             "compression, memorisation) separate what each primitive can do: recall and copying need global "
             "content-based token mixing, memorisation needs channel-mixer capacity, where sparse (MoE) channel "
             "mixers help.")

    def __init__(self, tasks: Sequence[str] = tuple(DEFAULT_TASKS), variants: Sequence[str] = VARIANTS,
                 steps: int = 800, n_train: int = 2000, n_test: int = 256, batch_size: int = 32, lr: float = 3e-3,
                 d_model: int = 64, d_ff: int = 128, n_experts: int = 4, sparsity: float = 0.75, window: int = 4,
                 attention_sparsity: float = 0.75, seeds: Sequence[int] = (0,),
                 task_options: dict[str, dict[str, Any]] | None = None) -> None:
        for name, given, allowed in (("tasks", tasks, tuple(TASKS)), ("variants", variants, VARIANTS)):
            bad = [v for v in given if v not in allowed]
            if bad or not given:
                raise SparsecraftError(f"{name}: unknown or empty {bad or list(given)}; allowed: {', '.join(allowed)}")
        self.tasks, self.variants = list(tasks), list(variants)
        extra = sorted(set(task_options or {}) - set(self.tasks))
        if extra:
            raise SparsecraftError(f"task_options name tasks not run: {', '.join(extra)}; "
                                   f"tasks: {', '.join(self.tasks)}")
        self.options = {t: dict(DEFAULT_TASKS[t], **(task_options or {}).get(t, {})) for t in self.tasks}
        for t in self.tasks:
            generate(t, 1, seed=0, **self.options[t])  # bad task options fail before anything trains
        self.steps, self.n_train = check_int("steps", steps, 1), check_int("n_train", n_train, 1)
        self.n_test, self.batch_size = check_int("n_test", n_test, 1), check_int("batch_size", batch_size, 1)
        self.lr = check_float("lr", lr, 0, 1, open_low=True)
        self.d_model, self.d_ff = check_int("d_model", d_model, 8), check_int("d_ff", d_ff, 1)
        if self.d_model % 8:
            raise SparsecraftError(f"d_model must be a multiple of 8 (4 heads of even width), got {d_model}")
        self.n_experts = check_int("n_experts", n_experts, 1)
        self.sparsity = check_float("sparsity", sparsity, 0.0, 0.99)
        self.window = check_int("window", window, 1)
        self.attention_sparsity = check_float("attention_sparsity", attention_sparsity, 0.0, 0.99)
        self.seeds = [check_int("seeds", s, 0) for s in seeds]
        if not self.seeds:
            raise SparsecraftError("seeds must list at least one seed")

    def run(self, progress: bool = False) -> LabResult:
        knobs = {"steps": self.steps, "n_train": self.n_train, "n_test": self.n_test, "batch_size": self.batch_size,
                 "lr": self.lr, "d_model": self.d_model, "d_ff": self.d_ff, "n_experts": self.n_experts,
                 "sparsity": self.sparsity, "window": self.window, "attention_sparsity": self.attention_sparsity}
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for task in self.tasks:
            runs[task] = {v: [train_and_test(task, v, self.options[task], seed=s, **knobs) for s in self.seeds]
                          for v in self.variants}
        mean = {t: {v: sum(r["test_acc"] for r in rs) / len(rs) for v, rs in vs.items()} for t, vs in runs.items()}
        rows = [[t, fmt(100 * chance(t, self.options[t]), 1), *(fmt(100 * mean[t][v], 1) for v in self.variants)]
                for t in self.tasks]
        rows.append(["mean", "", *(fmt(100 * sum(mean[t][v] for t in self.tasks) / len(self.tasks), 1)
                                   for v in self.variants)])
        settings = "; ".join(f"{t}: " + ", ".join(f"{k}={v}" for k, v in self.options[t].items()) for t in self.tasks)
        first = {v: runs[self.tasks[0]][v][0] for v in self.variants}
        table = LabTable(
            f"Held-out accuracy (%) over the scored positions of {self.n_test} fresh sequences, mean of seeds "
            f"{self.seeds}; two-block models, d_model {self.d_model}, d_ff {self.d_ff}, {self.steps} AdamW steps "
            f"(batch {self.batch_size}, lr {self.lr}, warmup + cosine) on {self.n_train} training sequences; "
            f"sparse-weights = static random ERK mask at {self.sparsity:.0%} of the block weights; moe = "
            f"{self.n_experts} experts of width {self.d_ff}, top-1; window = last {self.window} keys; top-k keeps "
            f"{1 - self.attention_sparsity:.0%} of the causal keys. Task settings: {settings}",
            ["task", "chance", *self.variants], rows)
        params = LabTable(
            f"Model size on {self.tasks[0]} (weights that are not zero) and the fraction of causal attention "
            "pairs kept",
            ["variant", "nonzero params", "attention pairs kept"],
            [[v, str(first[v]["params"]), fmt(first[v]["attention_kept"], 2)] for v in self.variants])
        return LabResult(self.name, self.claim, [table, params], self._finding(mean), {"runs": runs, "mean": mean})

    def _finding(self, mean: dict[str, dict[str, float]]) -> str:
        if "dense" not in self.variants:
            return "no dense baseline was run."
        parts = []
        for v in self.variants:
            if v == "dense":
                continue
            gaps = {t: 100 * (mean[t][v] - mean[t]["dense"]) for t in self.tasks}
            avg = sum(gaps.values()) / len(gaps)
            lost = [f"{t} {g:+.1f}" for t, g in gaps.items() if g <= -10]
            won = [f"{t} {g:+.1f}" for t, g in gaps.items() if g >= 10]
            parts.append(f"{v}: {avg:+.1f} points vs dense on average"
                         + (f", far behind on {', '.join(lost)}" if lost else "")
                         + (f", far ahead on {', '.join(won)}" if won else ""))
        dense = ", ".join(f"{t} {100 * mean[t]['dense']:.1f}%" for t in self.tasks)
        return f"dense: {dense}. " + "; ".join(parts) + "."
