"""Time a model dense vs. converted to sparse kernels: per layer and end to end.

``--model`` is one of:

* a sparsecraft checkpoint (``.safetensors`` written by ``sparsecraft.save``) of an
  ``nn.Sequential`` MLP -- the layer sizes are read from the checkpoint (Linear layers at
  their Sequential indices, ReLU in the gaps), or give ``--builder module:function`` that
  returns the model to load the checkpoint into;
* a Hugging Face model directory (``config.json``) or a built-in name (``smollm2-135m``),
  optionally with ``--checkpoint`` (a sparsecraft checkpoint of that model, e.g. pruned).

Each eligible Linear is converted with ``--backend`` (``auto``: per layer, only where a
sparse kernel is measured faster here) and timed on the input it really receives.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsecraft.cli.common import print_json
from sparsecraft.errors import SparsecraftError
from sparsecraft.formats.checkpoint import load, read_checkpoint

NAME = "bench"
HELP = "per-layer and end-to-end latency of a model, dense vs. sparse kernels"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="sparsecraft checkpoint of a Sequential MLP, HF directory or built-in name")
    p.add_argument("--checkpoint", help="sparsecraft checkpoint to load into an HF model / --builder model")
    p.add_argument("--builder", help="'module:function' returning the nn.Module for a checkpoint")
    p.add_argument("--backend", default="auto", help="auto (default) or a backend name")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the input (default 1)")
    p.add_argument("--seq-len", type=int, default=1, help="tokens per sequence for language models (default 1)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def mlp_from_state(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """An ``nn.Sequential`` of Linear (at the indices found) and ReLU (in the gaps)."""
    linears: dict[int, tuple[int, int, bool]] = {}
    for key, t in state.items():
        m = re.fullmatch(r"(\d+)\.weight", key)
        if m and t.dim() == 2:
            linears[int(m.group(1))] = (t.shape[1], t.shape[0], f"{m.group(1)}.bias" in state)
        elif not re.fullmatch(r"\d+\.(weight|bias|weight_mask)", key):
            raise SparsecraftError(
                f"checkpoint key {key!r} is not from an nn.Sequential MLP; pass --builder module:function"
            )
    if not linears:
        raise SparsecraftError("checkpoint has no Linear weights ('<index>.weight'); pass --builder")
    layers: list[nn.Module] = []
    for i in range(max(linears) + 1):
        if i in linears:
            inp, out, bias = linears[i]
            layers.append(nn.Linear(inp, out, bias=bias))
        else:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _builder(spec: str) -> nn.Module:
    mod, _, fn = spec.partition(":")
    if not fn:
        raise SparsecraftError(f"--builder {spec!r}: write it as 'package.module:function'")
    try:
        return getattr(importlib.import_module(mod), fn)()
    except (ImportError, AttributeError) as e:
        raise SparsecraftError(f"--builder {spec!r} cannot be loaded: {e}") from None


def build(args: argparse.Namespace) -> tuple[nn.Module, Any, str]:
    """(model, inputs, description) for the command-line arguments."""
    path = Path(args.model)
    if path.suffix == ".safetensors" or (args.builder and path.is_file()):
        state, _ = read_checkpoint(path)
        model = _builder(args.builder) if args.builder else mlp_from_state(state)
        load(model, path)
        first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
        if first is None:
            raise SparsecraftError(f"{path} builds a model without nn.Linear layers")
        return model.eval(), torch.randn(args.batch_size, first.in_features), f"checkpoint {path}"
    from sparsecraft.models.loader import load_model

    loaded = load_model(args.model)
    model = loaded.model
    if args.checkpoint:
        load(model, args.checkpoint, strict=False)
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=torch.Generator().manual_seed(0))
    return model.eval(), {"input_ids": ids}, f"{loaded.kind} {loaded.path}"


def run(args: argparse.Namespace) -> int:
    from sparsecraft.kernels.bench import bench_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, inputs, what = build(args)
    res = bench_model(model, inputs, backend=args.backend, repeats=args.repeats)
    if args.json:
        print_json({"model": what, "threads": torch.get_num_threads(), **res.to_dict()})
        return 0
    print(f"{what}: batch {args.batch_size}, {torch.get_num_threads()} threads, backend {args.backend}")
    print(res.table())
    kept = [x for x in res.convert.layers if not x.converted]
    if kept:
        print(f"\n{len(kept)} layer(s) kept dense:")
        for x in kept:
            print(f"  {x.name}: {x.reason}")
    return 0
