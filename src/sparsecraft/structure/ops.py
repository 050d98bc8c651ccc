"""How the tracer carries dimension labels through the ATen ops outside the layers.

Every rule takes the labels of the op's tensor arguments and returns the labels of its
outputs; where the op mixes channels in a way a removal cannot follow it calls
``tracer.spoil(label, reason)`` (the space is frozen). The op families:

* element-wise (with broadcasting, aligned from the right): labels that meet at the same output
  dimension are *coupled* (``tracer.couple``) -- a residual add merges two spaces;
* shape ops: ``view``/``reshape`` (dimensions grouped by equal products; a channel dimension may
  be split into heads x head_dim, merged back, repeated by an expanded dimension -- grouped-query
  ``repeat_kv`` -- or flattened channel-major with spatial dimensions), ``transpose``/``permute``,
  ``expand``, ``(un)squeeze``, ``slice``/``split`` and ``cat`` (channel ranges, or the two halves
  of a head that rotary embeddings swap);
* reductions and softmax: fine over unlabeled dimensions, a freeze over a channel dimension;
* pooling: keeps the batch and channel dimensions;
* scaled-dot-product attention: an *attention site* (:meth:`Tracer.attention`).

Any other op that touches a labeled tensor freezes its spaces: the trace never guesses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from sparsecraft.structure.labels import Ch, Heads, Label, SiteHeads, SiteOut, SiteWithin, Within

POINTWISE = frozenset("""
add sub rsub mul div neg pow rsqrt sqrt exp log tanh sigmoid silu gelu relu relu6 hardtanh leaky_relu elu selu
celu hardswish hardsigmoid softplus mish erf abs clamp clamp_min clamp_max where masked_fill _to_copy clone alias
detach lift_fresh copy maximum minimum lerp addcmul addcdiv reciprocal square sign native_dropout dropout
bernoulli threshold fill zero
""".split())
SHAPE_OPS = frozenset("view _unsafe_view reshape expand unsqueeze squeeze transpose t permute slice split "
                      "split_with_sizes cat select".split())
REDUCTIONS = frozenset("mean sum amax amin var std var_mean logsumexp prod max min".split())
SOFTMAX = frozenset("_softmax softmax _log_softmax log_softmax".split())
POOLING = frozenset("max_pool1d max_pool2d_with_indices max_pool3d_with_indices avg_pool1d avg_pool2d avg_pool3d "
                    "_adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool2d adaptive_max_pool3d".split())
ATTENTION = frozenset("_scaled_dot_product_flash_attention_for_cpu _scaled_dot_product_flash_attention "
                      "_scaled_dot_product_efficient_attention _scaled_dot_product_cudnn_attention "
                      "scaled_dot_product_attention _scaled_dot_product_attention_math".split())

Labels = tuple[Label, ...]


def reshape_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Split two shapes of equal numel into runs of dimensions with equal products."""
    i = j = 0
    groups: list[tuple[list[int], list[int]]] = []
    while i < len(a) or j < len(b):
        ins: list[int] = []
        outs: list[int] = []
        pa = pb = 1
        if i < len(a):
            pa, i = pa * a[i], i + 1
            ins.append(i - 1)
        if j < len(b):
            pb, j = pb * b[j], j + 1
            outs.append(j - 1)
        while pa != pb:
            if pa < pb and i < len(a):
                pa, i = pa * a[i], i + 1
                ins.append(i - 1)
            elif pb < pa and j < len(b):
                pb, j = pb * b[j], j + 1
                outs.append(j - 1)
            else:
                return None
        groups.append((ins, outs))
    return groups


def _regroup(tr: Any, labs: list[Label], sizes: list[int], out_sizes: list[int], what: str) -> list[Label]:
    """Labels of one reshape group (unlabeled dimensions of size 1 carry nothing)."""
    keep = [(lab, s) for lab, s in zip(labs, sizes) if s != 1 or lab is not None]
    out_nt = [k for k, s in enumerate(out_sizes) if s != 1]
    res: list[Label] = [None] * len(out_sizes)
    if all(lab is None for lab, _ in keep):
        return res
    if len(keep) == 1 and len(out_sizes) == 2 and out_sizes[1] != 1:  # split: heads x head_dim (heads may be 1)
        lab, inner = keep[0][0], out_sizes[1]
        if isinstance(lab, Ch) and lab.spread == 1:
            res[0], res[1] = Heads(lab.space, lab.off, inner), Within(lab.space, lab.off, inner)
            return res
        if isinstance(lab, SiteOut):
            res[0], res[1] = SiteHeads(lab.site), SiteWithin(lab.site)
            return res
    if len(keep) == 1 and len(out_nt) <= 1:  # the same dimension, maybe with size-1 dimensions around it
        res[out_nt[0] if out_nt else 0] = keep[0][0]
        return res
    if len(out_nt) <= 1 and len(keep) >= 2:  # merge
        (first, n_first), rest = keep[0], keep[1:]
        tail = math.prod(s for _, s in rest)
        second = rest[0][0]
        at = out_nt[0] if out_nt else 0
        if len(rest) == 1 and isinstance(first, Heads) and first.repeat == 1 and isinstance(second, Within) \
                and (first.space, first.off, first.inner) == (second.space, second.off, second.inner) and second.whole:
            res[at] = Ch(first.space, first.off, n_first * first.inner)
            return res
        if len(rest) == 1 and isinstance(first, SiteHeads) and isinstance(second, SiteWithin) \
                and first.site == second.site:
            res[at] = SiteOut(first.site)
            return res
        if all(lab is None for lab, _ in rest):
            if isinstance(first, Heads):  # repeat_kv: (kv heads, expanded group) -> query heads
                res[at] = Heads(first.space, first.off, first.inner, first.repeat * tail)
                return res
            if isinstance(first, Ch):  # channel-major flatten of C x H x W
                res[at] = Ch(first.space, first.off, first.n, first.spread * tail)
                return res
    for lab, _ in keep:
        tr.spoil(lab, f"reshaped by {what}")
    return res


def reshape(tr: Any, labs: Labels, shape_in: Sequence[int], shape_out: Sequence[int], what: str) -> list[Label]:
    groups = reshape_groups(list(shape_in), list(shape_out))
    out: list[Label] = [None] * len(shape_out)
    if groups is None:
        for lab in labs:
            tr.spoil(lab, f"reshaped by {what}")
        return out
    for ins, outs in groups:
        sub = _regroup(tr, [labs[i] for i in ins], [shape_in[i] for i in ins], [shape_out[j] for j in outs], what)
        for j, lab in zip(outs, sub):
            out[j] = lab
    return out


def broadcast(tr: Any, inputs: list[tuple[Labels | None, Sequence[int]]], shape: Sequence[int],
              what: str) -> list[Label]:
    """Element-wise op: couple the labels that land on each output dimension."""
    nd = len(shape)
    out: list[Label] = [None] * nd
    for k in range(nd):
        found: list[Label] = []
        for labs, sh in inputs:
            kk = k - (nd - len(sh))
            if labs is None or kk < 0 or sh[kk] != shape[k] or labs[kk] is None:
                continue
            found.append(labs[kk])
        if found:
            out[k] = tr.couple(found, what)
    return out


def slice_label(tr: Any, lab: Label, start: int, stop: int, step: int, size: int, what: str) -> Label:
    start, stop, _ = slice(start, stop, step).indices(size)
    if lab is None or (start == 0 and stop >= size and step == 1):
        return lab
    if isinstance(lab, Within):
        return Within(lab.space, lab.off, lab.inner, whole=False)
    if isinstance(lab, Ch) and lab.spread == 1 and step == 1:
        return Ch(lab.space, lab.off + start, max(stop - start, 0))
    tr.spoil(lab, f"sliced by {what}")
    return None


def cat_label(tr: Any, labs: list[Label], sizes: list[int], what: str) -> Label:
    if all(lab is None for lab in labs):
        return None
    if all(isinstance(lab, Within) for lab in labs) and len({(x.space, x.off, x.inner) for x in labs}) == 1:  # type: ignore[union-attr]
        if sum(sizes) == labs[0].inner:  # type: ignore[union-attr]
            return Within(labs[0].space, labs[0].off, labs[0].inner)  # type: ignore[union-attr]
    if all(isinstance(lab, Ch) and lab.spread == 1 for lab in labs) and len({x.space for x in labs}) == 1:  # type: ignore[union-attr]
        offs = [x.off for x in labs]  # type: ignore[union-attr]
        if all(offs[i + 1] == offs[i] + labs[i].n for i in range(len(labs) - 1)):  # type: ignore[union-attr]
            return Ch(labs[0].space, offs[0], sum(x.n for x in labs))  # type: ignore[union-attr]
    for lab in labs:
        tr.spoil(lab, f"concatenated by {what}")
    return None


def _dims(arg: Any, nd: int) -> list[int]:
    if arg is None:
        return list(range(nd))
    dims = [arg] if isinstance(arg, int) else list(arg)
    return [d % nd for d in dims] if nd else []


def shape_op(tr: Any, name: str, args: tuple, kwargs: dict, out: Any, labs: Labels, what: str) -> Any:
    """Output labels of a shape op on ``args[0]`` (a list for split)."""
    x = args[0]
    nd = x.dim() if isinstance(x, torch.Tensor) else 0
    if name in ("view", "_unsafe_view", "reshape"):
        return reshape(tr, labs, x.shape, out.shape, what)
    if name == "expand":
        lead = out.dim() - nd
        return [None] * lead + [None if (x.shape[i] == 1 and out.shape[lead + i] != 1) else labs[i] for i in range(nd)]
    if name == "unsqueeze":
        d = args[1] % (nd + 1)
        return list(labs[:d]) + [None] + list(labs[d:])
    if name == "squeeze":
        gone = _dims(args[1] if len(args) > 1 else None, nd)
        return [lab for i, lab in enumerate(labs) if not (i in gone and x.shape[i] == 1)]
    if name in ("transpose", "t"):
        d0, d1 = (args[1] % nd, args[2] % nd) if name == "transpose" else (0, 1 if nd > 1 else 0)
        res = list(labs)
        res[d0], res[d1] = res[d1], res[d0]
        return res
    if name == "permute":
        return [labs[d % nd] for d in args[1]]
    if name == "select":
        d = args[1] % nd
        if labs[d] is not None:
            tr.spoil(labs[d], f"one channel selected by {what}")
        return [lab for i, lab in enumerate(labs) if i != d]
    if name == "slice":
        d = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % nd
        start = args[2] if len(args) > 2 and args[2] is not None else 0
        stop = args[3] if len(args) > 3 and args[3] is not None else x.shape[d]
        step = args[4] if len(args) > 4 else 1
        res = list(labs)
        res[d] = slice_label(tr, labs[d], start, stop, step, x.shape[d], what)
        return res
    if name in ("split", "split_with_sizes"):
        d = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % nd
        outs, res, pos = list(out), [], 0
        for o in outs:
            lab = list(labs)
            lab[d] = slice_label(tr, labs[d], pos, pos + o.shape[d], 1, x.shape[d], what)
            pos += o.shape[d]
            res.append(lab)
        return res
    raise AssertionError(name)
