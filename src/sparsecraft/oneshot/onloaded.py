"""One-shot pruning of a model folder, loaded whole or onloaded one decoder block at a time.

``sparsecraft.prune("models/llama", 0.5, criterion="wanda", calib=ids, out="models/llama-50")``
reads a Hugging Face safetensors folder and writes the pruned model (``from_pretrained``-
loadable, plus its masks as bits in ``masks/``, :func:`read_masks`) to ``out``.

``offload="disk"`` runs the sequential protocol of :mod:`sparsecraft.oneshot.blockwise` with
sequential onloading (:mod:`sparsecraft.distributed.onload`): the model is built on the
``meta`` device; the embeddings are read to capture the first block's inputs and freed; then
for every block: read its weights from the shards in their stored dtype (bf16 / fp16 / fp32;
onto the GPU when there is one), gather its layers' input statistics in float32, prune, run
the pruned block to get the next block's inputs, write its output shard and put it back on
``meta``. Calibration activations stay in memory when they fit and spill to disk when not
(:mod:`sparsecraft.distributed.spill`). ``offload="none"`` loads the whole model (in its stored
dtype) and prunes it in memory; ``"auto"`` (default) onloads when the estimate of the
in-memory run exceeds 80% of the memory budget (:mod:`sparsecraft.distributed.memory_budget`).
Both give the same masks: the same batches go through the same block forwards in the same
dtype, so Wanda's masks are bit-identical and SparseGPT's weights too (same float operations).

Everything is checked before anything is written: a memory budget too small for one block is
a one-line error naming the binding limit; the output folder appears only when complete
(:func:`sparsecraft.atomic.directory`), and only rank 0 writes it under data parallelism.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsecraft import atomic
from sparsecraft.distributed import group, memory_budget
from sparsecraft.distributed.calibration import DataParallel
from sparsecraft.distributed.onload import OnloadedModel
from sparsecraft.distributed.shards import ShardWriter, copy_model_files, read_header
from sparsecraft.distributed.spill import SpilledInputs
from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import MASK_SUFFIX
from sparsecraft.oneshot import api
from sparsecraft.oneshot.blockwise import BlockInput, batched, block_forward, block_targets, capture_inputs, find_blocks
from sparsecraft.oneshot.memory import PeakRSS
from sparsecraft.report import LayerStats, SparsityReport

OFFLOAD = ("auto", "disk", "none")
MASKS = "masks"


def prune_folder(folder: str | os.PathLike, sparsity: Any, *, out: str | os.PathLike | None, offload: str | None,
                 method: str | None, criterion: Any, pattern: Any, distribution: Any, targets: Any, ignore: Any,
                 overrides: Any, calib: Any, skip_unfit: bool, batch_size: int, step: int, progress: bool,
                 distributed: bool | None, memory_budget_bytes: int | None = None, spill: bool | None = None,
                 device: str | torch.device | None = None, **options: Any) -> SparsityReport:
    """:func:`sparsecraft.prune` on a model folder (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SparsecraftError(f"prune() expects a torch.nn.Module or the path of a model folder; {str(folder)!r} "
                               "is not a folder")
    if out is None:
        raise SparsecraftError("pruning a model folder writes a new one: give out= (CLI: --out)")
    offload = "auto" if offload is None else offload
    if offload not in OFFLOAD:
        raise SparsecraftError(f"offload must be one of {', '.join(OFFLOAD)}, got {offload!r}")
    a = api.parse_args(sparsity, method, criterion, pattern, distribution, targets, ignore, overrides, batch_size,
                       options)
    if calib is None:
        raise SparsecraftError("pruning a model folder needs calibration data: pass calib= (token ids or batches)")
    if a.pruner is not None:
        a.pat = a.pruner.check_pattern(a.pat)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    om = OnloadedModel(folder, dev)
    budget, limit = memory_budget.budget(memory_budget_bytes)
    est = estimate(om, calib, batch_size)
    mode = choose(offload, est, budget, limit)
    if mode.startswith("none"):
        return _prune_whole(om, a, Path(out), calib, batch_size, skip_unfit, step, progress, distributed, mode)
    per_block_need = est["block"] + est["work"] + est["batch"]
    if per_block_need > budget:
        raise SparsecraftError(
            f"memory budget {memory_budget.mb(budget)} ({limit}) is too small for one block: about "
            f"{memory_budget.mb(per_block_need)} is needed (weights {memory_budget.mb(est['block'])}, statistics and "
            f"work {memory_budget.mb(est['work'])}, one batch {memory_budget.mb(est['batch'])}); raise the limit"
        )
    if spill is None:
        spill = per_block_need + est["activations"] > 0.9 * budget
    try:
        return _prune_onloaded(om, a, Path(out), calib, batch_size, skip_unfit, step, progress, distributed, mode,
                               bool(spill))
    except (MemoryError, RuntimeError) as e:  # nothing was written: the output folder is atomic
        if isinstance(e, RuntimeError) and "allocate" not in str(e):
            raise
        raise SparsecraftError(
            f"out of memory while pruning block by block ({limit} allowed {memory_budget.mb(budget)} at the start, "
            f"one block needs about {memory_budget.mb(per_block_need)}): raise the limit; nothing was written"
        ) from None


def choose(offload: str, est: dict[str, int], budget: int, limit: str) -> str:
    """``"disk (why)"`` or ``"none (why)"``: onload when asked, or (auto) when the in-memory run
    would need more than 80% of the budget."""
    whole = est["model"] + est["work"] + est["activations"] + est["batch"]
    if offload == "disk" or (offload == "auto" and whole > 0.8 * budget):
        why = ("offload='disk'" if offload == "disk" else
               f"auto: the in-memory run needs ~{memory_budget.mb(whole)}, {limit} allows {memory_budget.mb(budget)}")
        return f"disk ({why})"
    fits = f"auto: ~{memory_budget.mb(whole)} fits in {memory_budget.mb(budget)}"
    why = "offload='none'" if offload == "none" else fits
    return f"none ({why})"


def decide_offload(folder: str | os.PathLike, offload: str, calib: Any, batch_size: int) -> str:
    """What :func:`prune_folder` would do with this folder: ``"disk (why)"`` or ``"none (why)"``."""
    if offload not in OFFLOAD:
        raise SparsecraftError(f"offload must be one of {', '.join(OFFLOAD)}, got {offload!r}")
    budget, limit = memory_budget.budget()
    return choose(offload, estimate(OnloadedModel(folder, "cpu"), calib, batch_size), budget, limit)


def estimate(om: OnloadedModel, calib: Any, batch_size: int) -> dict[str, int]:
    """Rough byte counts: whole model, largest block, per-block work (float32 copies, Hessians,
    argsort indices), all calibration activations, one batch's forward temporaries."""
    stack = find_blocks(om.model)
    cfg = om.model.config
    hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 0)
    inter = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "ffn_dim", 0) or getattr(cfg, "n_inner", 0)
                or 4 * hidden)
    ids = calib if isinstance(calib, torch.Tensor) else None
    tokens = int(ids.numel()) if ids is not None else 0
    seq = int(ids.shape[-1]) if ids is not None else 0
    block = max(om.nbytes(om.params_under(stack.block_name(i))) for i in range(len(stack.blocks)))
    shapes = [tuple(p.shape) for p in stack.blocks[0].parameters() if p.dim() == 2]
    largest = max((r * c for r, c in shapes), default=0)
    widths = {c for _, c in shapes}
    work = largest * (4 * 3 + 8) + sum(3 * c * c * 4 for c in widths)
    item = om.dtype.itemsize
    batch_tokens = min(tokens, batch_size * max(seq, 1))
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 0) or 1)
    batch = batch_tokens * (hidden * 8 + inter * 3) * 4 + batch_size * heads * seq * seq * 4
    return {"model": om.ckpt.nbytes(), "block": block, "work": work, "activations": tokens * hidden * item * 2,
            "batch": batch}


def _prune_whole(om, a, out, calib, batch_size, skip_unfit, step, progress, distributed, mode) -> SparsityReport:  # noqa: ANN001
    """Load the whole model in its stored dtype, prune it in memory, write ``out``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(om.folder), dtype=om.dtype, use_safetensors=True).eval()
    dp = DataParallel.setup(distributed, model, calib, batch_size)
    rep = api._prune_blockwise(model, a.sparsity, a.pruner, a.crit, a.pat, a.dist, a.targets, a.ignore, a.overrides,
                               calib, batch_size, skip_unfit, step, progress, dp)
    rep.info["offload"] = mode
    if group.is_writer():
        masks = {}
        state = {}
        for name, t in model.state_dict().items():
            if name.endswith(MASK_SUFFIX):
                masks[om.checkpoint_name(name[: -len(MASK_SUFFIX)]) or name[: -len(MASK_SUFFIX)]] = t
            else:
                state[name] = t
        with atomic.directory(out) as tmp:
            model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
            copy_model_files(om.folder, tmp)
            write_masks(tmp / MASKS / "masks-00001.safetensors", masks)
            atomic.write_json(tmp / "prune.json", rep.info)
    return rep


def write_masks(path: Path, masks: dict[str, torch.Tensor]) -> None:
    """Keep-masks as packed bits (numpy little bit order) with their shapes in the metadata."""
    tensors = {k: torch.from_numpy(np.packbits(m.detach().cpu().reshape(-1).numpy(), bitorder="little"))
               for k, m in masks.items()}
    shapes = {k: list(m.shape) for k, m in masks.items()}
    atomic.write_safetensors(path, tensors, metadata={"sparsecraft_masks": json.dumps(shapes)})


def read_masks(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The keep-masks a model folder pruned by :func:`prune_folder` carries, by weight name."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    files = sorted((Path(folder) / MASKS).glob("*.safetensors"))
    if not files:
        raise SparsecraftError(f"{str(folder)!r} has no {MASKS}/ folder (was it written by sparsecraft.prune?)")
    for f in files:
        meta = json.loads(_metadata(f)["sparsecraft_masks"])
        for k, packed in load_file(str(f)).items():
            n = int(np.prod(meta[k]))
            bits = np.unpackbits(packed.numpy(), bitorder="little", count=n).astype(bool)
            out[k] = torch.from_numpy(bits).reshape(meta[k])
    return out


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _on(inp: BlockInput, device: torch.device) -> BlockInput:
    if device.type == "cpu":
        return inp
    return BlockInput(inp.hidden.to(device), inp.args, inp.kwargs)


def _move(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_move(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


class _DeviceView:
    """Iterate block inputs with their hidden states moved to the block's device."""

    def __init__(self, inputs: Any, device: torch.device) -> None:
        self.inputs, self.device = inputs, device

    def __iter__(self):  # noqa: ANN204
        for inp in self.inputs:
            yield _on(inp, self.device)

    def __len__(self) -> int:
        return len(self.inputs)


def _capture(om: OnloadedModel, stack: Any, batches: list[Any], spill: bool) -> Any:
    """First-block inputs of every batch, with only the parameters outside the blocks read
    (the output embeddings excepted) and freed again afterwards."""
    head = _head_names(om, stack)
    out_emb = om.model.get_output_embeddings()
    out_names = {f"{n}.weight" for n, m in om.model.named_modules() if m is out_emb} if out_emb is not None else set()
    needed = [n for n in head if n not in out_names]
    om.materialize(needed, "cpu")
    try:
        store: Any = SpilledInputs() if spill else []
        for b in batches:
            store.append(capture_inputs(om.model, stack, [b])[0])
    finally:
        om.release(needed)
    for inp in store._shells if spill else store:
        inp.args, inp.kwargs = _move(inp.args, om.device), _move(inp.kwargs, om.device)
    return store


def _head_names(om: OnloadedModel, stack: Any) -> list[str]:
    blocks = stack.prefix + "."
    return [n for n in om.names if not n.startswith(blocks)]


def _prune_onloaded(om, a, out, calib, batch_size, skip_unfit, step, progress, distributed, mode, spill):  # noqa: ANN001, ANN202
    model, stack = om.model, find_blocks(om.model)
    per_block = block_targets(model, stack, a.targets, a.ignore)
    plan = api._layer_plan(per_block, a.pat, a.dist, a.overrides, a.sparsity, skip_unfit)
    batches = batched(calib, batch_size)
    fp = [[n, list(om.ckpt.info[c][1]), str(om.ckpt.info[c][0])] for n, c in om.names.items() if c]
    dp = DataParallel.setup(distributed, None, calib, batch_size, fingerprint=fp)
    if dp is not None:
        batches = dp.local(batches)
    what = a.pruner.registry_name if a.pruner is not None else a.crit.registry_name
    info = api._info(a.pruner, a.crit, a.pat, a.dist, a.sparsity)
    info.update(offload=mode, spilled=spill, device=str(om.device), dtype=str(om.dtype).replace("torch.", ""))
    if dp is not None:
        info["data_parallel"] = dp.describe()
    t0 = time.perf_counter()
    if isinstance(a.dist, api.OWL):
        ratios = _owl_pass(om, stack, per_block, batches, a.dist.m, spill, dp)
        block_s = api.owl_sparsities(ratios, a.sparsity, a.dist.lam)
        plan = {t.name: (plan[t.name][0], block_s[i] if plan[t.name][1] is None else plan[t.name][1])
                for i, ts in enumerate(per_block) for t in ts if t.name in plan}
        info.update(owl_ratios=ratios, block_sparsities=block_s)
    needs_hessian = a.pruner is not None and a.pruner.needs_hessian
    layers: list[LayerStats] = []
    times: list[float] = []
    counts = {"numel": 0, "nonzeros": 0}
    n_blocks = len(stack.blocks)
    writer_ctx = atomic.directory(out) if group.is_writer() else _nowhere()
    with PeakRSS() as mem, writer_ctx as tmp:
        inputs = _capture(om, stack, batches, spill)
        head = [c for n in _head_names(om, stack) if (c := om.checkpoint_name(n))]
        writer = ShardWriter(tmp, n_blocks + len(head)) if tmp is not None else None
        for i in api._bar(f"{what} blocks (onloaded)", progress)(range(n_blocks)):
            tb = time.perf_counter()
            names = om.params_under(stack.block_name(i))
            om.materialize(names)
            block = stack.blocks[i]
            ts = [t for t in per_block[i] if t.name in plan]
            if ts:
                stats = api.collect_stats(block, _DeviceView(inputs, om.device), ts, needs_hessian, dp)
                for t in ts:
                    p, s = plan[t.name]
                    api.prune_target(t, stats.get(t.module_name), p, float(s), a.pruner, a.crit, what, step)
                del stats
            _advance(block, inputs, om.device)
            masks = {}
            for t in ts:
                keep = t.module._buffers.pop(t.param_name + MASK_SUFFIX)
                t.module.sparsecraft_meta.pop(t.param_name, None)
                masks[om.checkpoint_name(t.name) or t.name] = keep
                nz = int(keep.sum())
                layers.append(LayerStats(t.name, tuple(keep.shape), plan[t.name][0].spec(), float(plan[t.name][1]),
                                         1.0 - nz / keep.numel(), nz, keep.numel()))
            tensors = {om.checkpoint_name(n): dict(model.named_parameters())[n] for n in names}
            for v in tensors.values():
                counts["numel"] += v.numel()
                counts["nonzeros"] += int((v != 0).sum())
            if writer is not None:
                writer.write(tensors)
                write_masks(tmp / MASKS / f"masks-{i + 1:05d}.safetensors", masks)
            om.release(names)
            times.append(round(time.perf_counter() - tb, 3))
        if isinstance(inputs, SpilledInputs):
            inputs.close()
        for key in head:  # embeddings, final norm, LM head: copied unchanged, one shard each
            rest = om.ckpt.read([key])
            counts["numel"] += rest[key].numel()
            counts["nonzeros"] += int((rest[key] != 0).sum())
            if writer is not None:
                writer.write(rest)
            del rest
        if writer is not None:
            writer.finish(om.folder)
        info.update(wall_time_s=round(time.perf_counter() - t0, 3), block_times_s=times)
        rep = SparsityReport(layers, counts["numel"], counts["nonzeros"], info)
        if tmp is not None:
            info["peak_rss_mb"] = round(mem.peak_mb, 1)
            atomic.write_json(tmp / "prune.json", info)
    info["peak_rss_mb"] = round(mem.peak_mb, 1)
    return rep


class _nowhere:
    """The output context of ranks other than 0: nothing is written."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


@torch.no_grad()
def _advance(block: torch.nn.Module, inputs: Any, device: torch.device) -> None:
    """Replace every batch's hidden states by the (pruned) block's outputs."""
    if isinstance(inputs, SpilledInputs):
        inputs.advance(lambda inp: block_forward(block, _on(inp, device)))
        return
    for inp in inputs:
        inp.hidden = block_forward(block, _on(inp, device)).to("cpu")


@torch.no_grad()
def _owl_pass(om, stack, per_block, batches, m, spill, dp):  # noqa: ANN001, ANN202
    """OWL's outlier ratios from the dense blocks: one onloaded pass without writing."""
    inputs = _capture(om, stack, batches, spill)
    ratios = [0.0] * len(stack.blocks)
    for i in range(len(stack.blocks)):
        names = om.params_under(stack.block_name(i))
        om.materialize(names)
        ts = per_block[i]
        if ts:
            stats = api.collect_stats(stack.blocks[i], _DeviceView(inputs, om.device), ts, False, dp)
            scores = [api.wanda_scores(t.layout.to_rows(t.param), stats[t.module_name].col_norms) for t in ts]
            ratios[i] = api.outlier_ratio(scores, m)
        _advance(stack.blocks[i], inputs, om.device)
        om.release(names)
    if isinstance(inputs, SpilledInputs):
        inputs.close()
    return ratios


__all__ = ["estimate", "prune_folder", "read_header", "read_masks", "write_masks"]
