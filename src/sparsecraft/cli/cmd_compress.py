"""``sparsecraft compress IN OUT``: store a model's weights in packed lossless formats.

IN is a safetensors file (a sparsecraft checkpoint or any plain safetensors file, e.g. a
Hugging Face ``model.safetensors``) or a Hugging Face model directory; OUT is a file or a
directory accordingly. Prints the size before and after and how many tensors use each
format; ``--json`` prints the same as JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsecraft.cli.common import print_json
from sparsecraft.errors import SparsecraftError

NAME = "compress"
HELP = "pack a safetensors file or HF model directory into lossless sparse formats"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sparsecraft.formats import FORMAT_CHOICES

    p.add_argument("input", help="a .safetensors file or a Hugging Face model directory")
    p.add_argument("output", help="output .safetensors file, or directory for a HF input")
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES,
                   help="packed format for every tensor (default: auto = smallest lossless per tensor)")
    p.add_argument("--json", action="store_true", help="print as JSON")


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def print_summary(out: dict, verb: str) -> None:
    print(f"{verb} {out['input']} -> {out['output']}")
    print(f"  before: {human(out['input_bytes'])} ({out['input_bytes']} bytes)")
    print(f"  after:  {human(out['output_bytes'])} ({out['output_bytes']} bytes), "
          f"{100 * out['ratio']:.1f}% of before")
    if out.get("formats"):
        print("  tensors per format: " + ", ".join(f"{k} {v}" for k, v in sorted(out["formats"].items())))


def run(args: argparse.Namespace) -> int:
    from sparsecraft.formats.files import compress_file
    from sparsecraft.formats.hf import compress_dir, is_hf_dir

    src, dst = Path(args.input), Path(args.output)
    if src.resolve() == dst.resolve():
        raise SparsecraftError("input and output are the same path; write to a new file or directory")
    if is_hf_dir(src):
        out = compress_dir(src, dst, format=args.format)
    elif src.is_file():
        if dst.is_dir():
            raise SparsecraftError(f"output {str(dst)!r} is a folder; a file input writes a file: give a file path")
        out = compress_file(src, dst, format=args.format)
    else:
        raise SparsecraftError(f"{src} is neither a .safetensors file nor a directory with config.json")
    if args.json:
        print_json(out)
    else:
        print_summary(out, "compressed")
    return 0
