"""A small Llama-style causal language model built from a config, with dense, MoE or STEM
feed-forward blocks per layer and Engram memory at chosen layers.

    from sparsecraft.moe import SparseLM, SparseLMConfig
    cfg = SparseLMConfig(vocab_size=256, d_model=128, n_layers=4, n_heads=4, d_ff=512,
                         ffn="moe", moe={"n_experts": 8, "expert_dim": 256, "top_k": 2})
    model = SparseLM(cfg)
    out = model(input_ids=ids)            # out.logits (B, T, vocab); out.loss with labels=
    loss = out.loss + aux_loss(model)     # + the routers' balancing / z losses

Layer l: ``x += engram(x, ids)`` (Engram layers only), ``x += attn(norm(x))``,
``x += mlp(norm(x), ids)`` with ``mlp`` the registered FFN (``dense`` SwiGLU, ``moe``, ``stem``)
named by ``config.ffn`` (one name, or one per layer); the attention block is the registered
``config.attention`` (default ``standard``: causal RoPE multi-head attention). RMSNorm before
each block and before the (optionally tied) LM head. Weights start N(0, ``init_std``) except
STEM's up-table (see :mod:`sparsecraft.moe.stem`) and norms (ones).

:func:`save_lm` / :func:`load_lm` store the model with :func:`sparsecraft.save` (safetensors,
masks as bits) and its config in the checkpoint metadata, so a file rebuilds its own model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import CheckpointError, SparsecraftError
from sparsecraft.moe.attention import ATTENTION
from sparsecraft.moe.engram import ENGRAM_OPTIONS, Engram, check_engram_options
from sparsecraft.moe.ffn import FFN, check_positive
from sparsecraft.moe.layer import moe_options
from sparsecraft.moe.router import TopKRouter

CONFIG_KEY = "sparse_lm_config"


@dataclass
class SparseLMConfig:
    """Shape of a :class:`SparseLM`; ``moe`` / ``stem`` / ``engram`` hold the options of those
    blocks (see :class:`~sparsecraft.moe.layer.MoEFFN`, :class:`~sparsecraft.moe.stem.STEMFFN`,
    :class:`~sparsecraft.moe.engram.Engram`; ``engram["layers"]`` lists the layers that get one)."""

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    max_seq_len: int = 512
    ffn: str | list[str] = "dense"
    moe: dict[str, Any] = field(default_factory=dict)
    stem: dict[str, Any] = field(default_factory=dict)
    engram: dict[str, Any] | None = None
    attention: str = "standard"
    attention_options: dict[str, Any] = field(default_factory=dict)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SparseLMConfig:
        if not isinstance(d, dict):
            raise SparsecraftError(f"a model config must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SparsecraftError(f"unknown model option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def ffn_kinds(self) -> list[str]:
        kinds = [self.ffn] * self.n_layers if isinstance(self.ffn, str) else list(self.ffn)
        if len(kinds) != self.n_layers:
            raise SparsecraftError(f"ffn lists {len(kinds)} kinds for n_layers={self.n_layers}")
        for k in kinds:
            FFN.get(k)
        return kinds

    def engram_layers(self) -> list[int]:
        if not self.engram:
            return []
        layers = self.engram.get("layers", [1])
        if not isinstance(layers, (list, tuple)) or any(
                isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_layers for i in layers):
            raise SparsecraftError(f"engram.layers must list layer indices in [0, {self.n_layers - 1}], got {layers!r}")
        return sorted(set(layers))

    def validate(self) -> None:
        """Check every option without building the model (one-line errors naming the value)."""
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            check_positive(name, getattr(self, name))
        kinds = self.ffn_kinds()
        check = getattr(ATTENTION.get(self.attention), "check_options", None)
        if check is not None:
            check(self.attention_options)
        if "moe" in kinds:
            moe_options(self.moe)
        if self.engram is not None:
            if not isinstance(self.engram, dict):
                raise SparsecraftError(f"engram must be a mapping of options, got {self.engram!r}")
            unknown = sorted(set(self.engram) - set(ENGRAM_OPTIONS))
            if unknown:
                raise SparsecraftError(f"unknown engram option(s) {', '.join(unknown)}; "
                                       f"allowed: {', '.join(ENGRAM_OPTIONS)}")
            self.engram_layers()
            check_engram_options(self.vocab_size, **{k: v for k, v in self.engram.items() if k != "layers"})


class LMOutput(NamedTuple):
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class Block(nn.Module):
    """One decoder layer: [Engram] -> attention -> FFN, pre-norm residual."""

    def __init__(self, config: SparseLMConfig, layer: int, kind: str, engram: Engram | None) -> None:
        super().__init__()
        self.engram = engram
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = ATTENTION.get(config.attention).from_config(config, layer)  # type: ignore[attr-defined]
        self.ffn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = FFN.get(kind).from_config(config, layer)  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        if self.engram is not None:
            x = x + self.engram(x, token_ids)
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.ffn_norm(x), token_ids)


class SparseLM(nn.Module):
    """Causal LM of :class:`SparseLMConfig`; ``forward(input_ids, labels=None) -> LMOutput``."""

    def __init__(self, config: SparseLMConfig | dict[str, Any], engram_compression: torch.Tensor | None = None) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = SparseLMConfig.from_dict(config)
        config.validate()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        taken: set[int] = set()
        engram_layers = config.engram_layers()
        eopts = {k: v for k, v in (config.engram or {}).items() if k != "layers"}
        blocks = []
        for i, kind in enumerate(config.ffn_kinds()):
            eng = None
            if i in engram_layers:
                eng = Engram(config.d_model, config.vocab_size, i, compression=engram_compression, taken_primes=taken,
                             norm_eps=config.norm_eps, **eopts)
            blocks.append(Block(config, i, kind, eng))
        self.layers = nn.ModuleList(blocks)
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init(config.init_std)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @torch.no_grad()
    def _init(self, std: float) -> None:
        from sparsecraft.moe.experts import FusedExperts

        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, std)
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, std)
            elif isinstance(m, FusedExperts):
                m.gate_up_proj.normal_(0.0, std)
                m.down_proj.normal_(0.0, std)
            elif isinstance(m, TopKRouter):
                m.weight.normal_(0.0, std)
        for m in self.modules():  # blocks with their own initialisation
            if hasattr(m, "reset_table"):
                m.reset_table()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> LMOutput:
        if input_ids.dim() != 2:
            raise SparsecraftError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_seq_len:
            raise SparsecraftError(f"sequence of {input_ids.shape[1]} tokens exceeds "
                                   f"max_seq_len={self.config.max_seq_len}")
        x = self.embed_tokens(input_ids)
        for block in self.layers:
            x = block(x, input_ids)
        logits = self.lm_head(self.norm(x))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        return LMOutput(logits, loss)


def routers(model: nn.Module) -> list[TopKRouter]:
    return [m for m in model.modules() if isinstance(m, TopKRouter)]


def aux_loss(model: nn.Module) -> torch.Tensor | float:
    """Sum of the routers' auxiliary losses of the last training forward (0.0 when none)."""
    losses = [r.aux_loss for r in routers(model) if r.aux_loss is not None]
    return torch.stack(losses).sum() if losses else 0.0


def update_router_biases(model: nn.Module) -> None:
    """Auxiliary-loss-free balancing: every router's bias step (call after optimizer.step())."""
    for r in routers(model):
        r.update_bias()


def memory_rows(model: nn.Module, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """{module name: sorted table rows} every Engram and STEM table of ``model`` reads for a batch,
    computed from the token ids alone (deterministic addressing: prefetch them from host memory)."""
    out = {}
    for name, m in model.named_modules():
        if hasattr(m, "rows_needed") and isinstance(m, nn.Module) and name:
            out[name] = m.rows_needed(input_ids)
    return out


def save_lm(model: SparseLM, path: str | os.PathLike, format: str = "dense") -> Path:
    """Write ``model`` (weights, masks, buffers) and its config with :func:`sparsecraft.save`."""
    from sparsecraft.formats.checkpoint import save

    return save(model, path, extra={CONFIG_KEY: model.config.to_dict()}, format=format)


def read_lm_config(path: str | os.PathLike) -> SparseLMConfig:
    """The :class:`SparseLMConfig` stored in a checkpoint written by :func:`save_lm`."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            doc = json.loads((f.metadata() or {})["sparsecraft"])
        cfg = doc["extra"][CONFIG_KEY]
    except Exception as e:  # damaged header, no metadata, not a save_lm checkpoint
        raise CheckpointError(f"{p} holds no sparsecraft LM config ({type(e).__name__}: {e})") from None
    return SparseLMConfig.from_dict(cfg)


def load_lm(path: str | os.PathLike) -> SparseLM:
    """Rebuild and load a model written by :func:`save_lm` (verified by :func:`sparsecraft.load`)."""
    from sparsecraft.formats.checkpoint import load

    model = SparseLM(read_lm_config(path))
    load(model=model, path=path)
    return model
