"""``sparsecraft decompress IN OUT``: packed sparsecraft file/directory back to dense.

A file compressed from a plain safetensors file becomes that plain file again (same tensors
bit for bit, same metadata); a sparsecraft checkpoint becomes a dense sparsecraft
checkpoint; a sparse Hugging Face directory becomes a standard one with
``model.safetensors``, loadable with ``from_pretrained``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsecraft.cli.cmd_compress import print_summary
from sparsecraft.cli.common import print_json
from sparsecraft.errors import SparsecraftError

NAME = "decompress"
HELP = "unpack a sparsecraft packed file or sparse HF directory to dense safetensors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="a packed .safetensors file or a sparse Hugging Face directory")
    p.add_argument("output", help="output .safetensors file, or directory for a HF input")
    p.add_argument("--json", action="store_true", help="print as JSON")


def run(args: argparse.Namespace) -> int:
    from sparsecraft.formats.files import decompress_file
    from sparsecraft.formats.hf import decompress_dir

    src, dst = Path(args.input), Path(args.output)
    if src.resolve() == dst.resolve():
        raise SparsecraftError("input and output are the same path; write to a new file or directory")
    if src.is_dir():
        out = decompress_dir(src, dst)
    elif src.is_file():
        if dst.is_dir():
            raise SparsecraftError(f"output {str(dst)!r} is a folder; a file input writes a file: give a file path")
        out = decompress_file(src, dst)
    else:
        raise SparsecraftError(f"{src} does not exist")
    if args.json:
        print_json(out)
    else:
        print_summary(out, "decompressed")
    return 0
