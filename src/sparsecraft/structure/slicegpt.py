"""SliceGPT: fold the norms, rotate every block by PCA of its calibration signals, slice.

Ashkboos et al. (2024), "SliceGPT: Compress Large Language Models by Deleting Rows and Columns";
the steps follow the paper (Sec. 3.2-3.4) and the reference implementation's sequential scheme:

1. fold every RMSNorm scale into the linear layers that read it (``W <- W diag(gamma)`` for
   q/k/v after ``input_layernorm``, gate/up after ``post_attention_layernorm``) and make the norms
   scale-free (:class:`~sparsecraft.structure.sliced.RMSN`);
2. block by block, on the calibration activations *of the already sliced blocks before it*:
   Q_mid = PCA of the signal entering the MLP's norm, Q_out = PCA of the block's output, where
   PCA(X) = eigenvectors of H = sum_t x_t x_t^T + 0.01 mean(diag H) I (float64), by descending
   eigenvalue, the first ``d_new`` columns kept;
3. rotate: q/k/v read ``W Q_in``, o_proj writes ``Q_mid^T W``, gate/up read ``W Q_mid``, down_proj
   writes ``Q_out^T W``; the residual paths get the shortcuts ``Q_in^T Q_mid`` and ``Q_mid^T Q_out``.

``d_new = int((1 - sparsity) * hidden)`` rounded down to a multiple of ``round_to`` (8, as the
reference ``round_interval``).

``embeddings="slice"`` is the reference layout: the embedding is rotated by the PCA of its
output and sliced, the LM head is untied, gets the final norm's scale folded in and is rotated
by the last block's (unsliced) Q_out -- below ~30% slicing that model has *more* parameters than
the dense one (an untied head plus 2 d_new^2 shortcut parameters per block).
``embeddings="keep"`` (default) keeps the embedding, the final norm and a tied LM head in the
original basis: the first block reads it unrotated (Q_in = I, its q/k/v keep the full width) and
the last block writes it back (Q_out = I). Fewer parameters, and nothing the head reads is sliced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.blockwise import BlockInput, block_forward, capture_inputs
from sparsecraft.structure import hf
from sparsecraft.structure.sliced import RMSN, SlicedDecoderLayer, check_llama_style, hidden_and_eps

EMBEDDINGS = ("keep", "slice")


class _Stop(Exception):
    pass


@torch.no_grad()
def pca(xs: Iterable[torch.Tensor], damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues descending, eigenvectors as columns) of sum x x^T + damp * mean(diag) I, float64."""
    H = None
    for x in xs:
        x = x.detach().double().reshape(-1, x.shape[-1])
        H = x.T @ x if H is None else H + x.T @ x
    if H is None:
        raise SparsecraftError("slicegpt needs calibration data: pass calib=")
    H.diagonal().add_(damp * H.diagonal().mean())
    vals, vecs = torch.linalg.eigh(H)
    order = torch.argsort(vals, descending=True)
    return vals[order], vecs[:, order]


def _rot_in(lin: nn.Linear, Q: torch.Tensor) -> None:
    """The layer reads the rotated basis: W <- W Q (columns)."""
    w = lin.weight
    lin.weight = nn.Parameter((w.detach().double() @ Q.to(w.device)).to(w.dtype), requires_grad=w.requires_grad)
    lin.in_features = lin.weight.shape[1]


def _rot_out(lin: nn.Linear, Q: torch.Tensor) -> None:
    """The layer writes the rotated basis: W <- Q^T W (rows, and the bias)."""
    w = lin.weight
    lin.weight = nn.Parameter((Q.T.to(w.device) @ w.detach().double()).to(w.dtype), requires_grad=w.requires_grad)
    if lin.bias is not None:
        lin.bias = nn.Parameter((Q.T.to(w.device) @ lin.bias.detach().double()).to(w.dtype))
    lin.out_features = lin.weight.shape[0]


def _set(lin: nn.Linear, m: torch.Tensor) -> None:
    """A shortcut computing x M: weight = M^T."""
    lin.weight = nn.Parameter(m.T.to(lin.weight.dtype).contiguous(), requires_grad=lin.weight.requires_grad)
    lin.out_features, lin.in_features = lin.weight.shape


def _fold(norm: nn.Module, layers: list[nn.Linear]) -> None:
    g = norm.weight.detach().double()
    for lin in layers:
        lin.weight = nn.Parameter((lin.weight.detach().double() * g.to(lin.weight.device)).to(lin.weight.dtype))


def sliced_width(hidden: int, sparsity: float, round_to: int = 8) -> int:
    d = int((1.0 - sparsity) * hidden)
    return d - d % round_to if round_to > 1 else d


@torch.no_grad()
def slice_gpt(model: nn.Module, sparsity: float, batches: list[Any], *, embeddings: str = "keep", round_to: int = 8,
              progress: Callable[[Iterable], Iterable] | None = None) -> dict[str, Any]:
    """Slice ``model`` in place (see the module docstring); returns a summary dict."""
    if embeddings not in EMBEDDINGS:
        raise SparsecraftError(f"slicegpt embeddings must be one of {', '.join(EMBEDDINGS)}, got {embeddings!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise SparsecraftError(f"slicegpt round_to must be an integer >= 1, got {round_to!r}")
    if not 0.0 <= sparsity < 1.0:
        raise SparsecraftError(f"slicegpt sparsity (the fraction of the hidden size sliced) must be in [0, 1), "
                               f"got {sparsity}")
    stack, emb, norm, head = check_llama_style(model)
    hidden, eps = hidden_and_eps(model, norm)
    d_new = sliced_width(hidden, sparsity, round_to)
    if d_new < 1:
        raise SparsecraftError(f"slicing {sparsity:g} of hidden size {hidden} (rounded to {round_to}) leaves "
                               "no channel")
    if not batches:
        raise SparsecraftError("slicegpt computes its rotations from calibration data: pass calib=")
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    inputs = capture_inputs(model, stack, batches)
    slice_emb = embeddings == "slice"
    n = len(stack.blocks)
    if slice_emb:
        q_in = pca(i.hidden for i in inputs)[1][:, :d_new]
        if head.weight is emb.weight:
            head.weight = nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
        emb.weight = nn.Parameter((emb.weight.detach().double() @ q_in).to(emb.weight.dtype))
        emb.embedding_dim = d_new
    else:
        q_in = torch.eye(hidden, dtype=torch.float64)
    for inp in inputs:
        inp.hidden = (inp.hidden.double() @ q_in).to(inp.hidden.dtype)
    dims = []
    for i in (progress or (lambda x: x))(range(n)):
        layer = stack.blocks[i]
        att, mlp = layer.self_attn, layer.mlp
        _fold(layer.input_layernorm, [att.q_proj, att.k_proj, att.v_proj])
        _fold(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
        d_in = q_in.shape[1]
        d_out = hidden if i == n - 1 else d_new
        s = SlicedDecoderLayer(layer, d_in, hidden, hidden, hidden, eps)
        stack.blocks[i] = s
        for lin in (att.q_proj, att.k_proj, att.v_proj):
            _rot_in(lin, q_in)
        _set(s.attn_shortcut, q_in.T)
        q_mid = pca(_mlp_inputs(s, inputs))[1][:, :d_new]
        _set(s.attn_shortcut, q_in.T @ q_mid)
        _rot_out(att.o_proj, q_mid)
        _rot_in(mlp.gate_proj, q_mid)
        _rot_in(mlp.up_proj, q_mid)
        _set(s.mlp_shortcut, q_mid.T)
        outs = [block_forward(s, inp) for inp in inputs]
        if i == n - 1 and not slice_emb:
            q_out = torch.eye(hidden, dtype=torch.float64)
        else:
            q_out = pca(outs)[1][:, :d_out]
        _set(s.mlp_shortcut, q_mid.T @ q_out)
        _rot_out(mlp.down_proj, q_out)
        for inp, out in zip(inputs, outs):
            inp.hidden = (out.double() @ q_out).to(out.dtype)
        dims.append([d_in, d_new, q_out.shape[1]])
        q_in = q_out
    if slice_emb:
        folded = head.weight.detach().double() * norm.weight.detach().double()
        head.weight = nn.Parameter(folded.to(head.weight.dtype))
        _rot_in(head, q_in)
        model.model.norm = RMSN(hidden, eps)
    model.train(was_training)
    spec = {"hidden": hidden, "eps": eps, "layers": dims, "final_norm": "rmsn" if slice_emb else "original",
            "embeddings": embeddings, "sparsity": float(sparsity), "width": d_new}
    cfg = model.config
    cfg.sparsecraft_structure = {**(getattr(cfg, hf.RECORD, None) or {"version": 1, "history": [], "attrs": {}}),
                                 "slicegpt": spec}
    hf.sync_config(model, {"kind": "slicegpt", "sparsity": float(sparsity), "width": d_new, "embeddings": embeddings})
    return {"width": d_new, "hidden": hidden, "embeddings": embeddings, "layers": dims,
            "wall_time_s": round(time.perf_counter() - t0, 3)}


def _mlp_inputs(layer: SlicedDecoderLayer, inputs: list[BlockInput]) -> list[torch.Tensor]:
    """The signal entering the MLP's norm (attention half done), for every calibration batch."""
    got: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple) -> None:
        got.append(args[0].detach())
        raise _Stop

    handle = layer.post_attention_layernorm.register_forward_pre_hook(hook)
    try:
        for inp in inputs:
            try:
                block_forward(layer, inp)
            except _Stop:
                pass
    finally:
        handle.remove()
    return got
