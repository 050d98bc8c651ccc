"""Show the true per-layer sparsity (and quantization) stored in a sparsecraft checkpoint.

The sparsity is counted from the stored weights themselves (zeros in the weight that forward
uses), not taken from the metadata; the metadata's pattern and target are shown beside it. For
quantized weights (``sparsecraft prune --quantize``) the grid, the packed format and the stored
bytes per weight are shown too. The argument is a ``.safetensors`` file, a sparse Hugging Face
directory (its ``sparse_model.safetensors``) or a ``sparsecraft prune --out`` run folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sparsecraft.cli.common import print_json
from sparsecraft.masks import MASK_SUFFIX

NAME = "inspect"
HELP = "show per-layer true sparsity, pattern and target of a checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a .safetensors file written by sparsecraft.save, a sparse HF directory "
                                      "or a prune run folder")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument("--all", action="store_true", help="also list dense >=2-D tensors without a mask")


def inspect_checkpoint(path: str, include_dense: bool = False) -> dict:
    from sparsecraft.formats.checkpoint import read_checkpoint
    from sparsecraft.formats.hf import SPARSE_WEIGHTS, resolve_dir
    from sparsecraft.formats.qcommon import QUANT_FORMATS
    from sparsecraft.quant.state import is_quant_key

    if Path(path).is_dir():
        path = str(resolve_dir(path) / SPARSE_WEIGHTS)
    state, doc = read_checkpoint(path)
    masks = doc.get("masks", {})
    packed = doc.get("packed", {})
    layers = []
    for key, t in state.items():
        if (key.endswith(MASK_SUFFIX) and t.dtype == torch.bool) or is_quant_key(key) or key in doc.get("aliases", {}):
            continue
        mkey = key + MASK_SUFFIX
        quant = packed.get(key) if packed.get(key, {}).get("format") in QUANT_FORMATS else None
        if mkey not in masks and quant is None and not (include_dense and t.dim() >= 2):
            continue
        info = masks.get(mkey, {})
        nz = int(torch.count_nonzero(t))
        mask_ok = bool(torch.all(t[~state[mkey]] == 0)) if mkey in state else True
        layers.append(
            {
                "name": key,
                "shape": list(t.shape),
                "dtype": str(t.dtype).replace("torch.", ""),
                "pattern": info.get("pattern", "dense"),
                "target": info.get("target", 0.0),
                "sparsity": 1 - nz / t.numel(),
                "nonzeros": nz,
                "numel": t.numel(),
                "zeros_match_mask": mask_ok,
                "quant": None if quant is None else {
                    "bits": quant["params"]["bits"], "group": quant["params"]["group"],
                    "sym": quant["params"]["sym"], "format": quant["format"], "bytes": quant["nbytes"],
                    "bytes_per_weight": quant["nbytes"] / max(1, t.numel()),
                },
            }
        )
    numel = sum(l["numel"] for l in layers)
    nonzeros = sum(l["nonzeros"] for l in layers)
    plain = {k: t for k, t in state.items() if not k.endswith(MASK_SUFFIX) and not is_quant_key(k)}
    total_all = sum(t.numel() for t in plain.values())
    nz_all = sum(int(torch.count_nonzero(t)) for t in plain.values())
    return {
        "checkpoint": str(path),
        "layers": layers,
        "total": {"numel": numel, "nonzeros": nonzeros, "sparsity": 1 - nonzeros / numel if numel else 0.0},
        "model": {"numel": total_all, "nonzeros": nz_all, "sparsity": 1 - nz_all / total_all if total_all else 0.0},
        "extra": doc.get("extra", {}),
    }


def run(args: argparse.Namespace) -> int:
    info = inspect_checkpoint(args.checkpoint, include_dense=args.all)
    if args.json:
        print_json(info)
        return 0
    print(f"{info['checkpoint']}")
    print("| layer | shape | pattern | target | true sparsity | nonzeros | quantization | bytes/weight |")
    print("|---|---|---|---|---|---|---|---|")
    for l in info["layers"]:
        flag = "" if l["zeros_match_mask"] else "  (weights outside the mask are nonzero!)"
        shape = "x".join(map(str, l["shape"]))
        q = l["quant"]
        qtext = "-" if q is None else f"int{q['bits']} g{q['group']} {'sym' if q['sym'] else 'asym'} ({q['format']})"
        bpw = "-" if q is None else f"{q['bytes_per_weight']:.3f}"
        print(
            f"| {l['name']} | {shape} | {l['pattern']} | {l['target']:.4f} | "
            f"{l['sparsity']:.4f} | {l['nonzeros']} | {qtext} | {bpw} |{flag}"
        )
    t, m = info["total"], info["model"]
    print(f"| **total (masked)** | {t['numel']} | | | {t['sparsity']:.4f} | {t['nonzeros']} | | |")
    print(f"| **model (all tensors)** | {m['numel']} | | | {m['sparsity']:.4f} | {m['nonzeros']} | | |")
    return 0
