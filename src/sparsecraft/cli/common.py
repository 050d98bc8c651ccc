"""Helpers shared by the sub-commands: JSON printing, comma lists."""

from __future__ import annotations

import json
import sys
from typing import Any

from sparsecraft.errors import SparsecraftError


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def float_list(text: str, what: str = "value") -> list[float]:
    """'0.5,0.7' -> [0.5, 0.7] with a clear error."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SparsecraftError(f"bad {what} list {text!r}: give comma-separated numbers") from None


# One set of flags for every command (the same words as the Python API and the recipes).


def json_or_name(text: str) -> Any:
    """A registry spec from the command line: a plain name, or a JSON object with a ``type``."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise SparsecraftError(f"bad JSON {text!r}: {e.msg}") from None
        if not isinstance(value, dict):
            raise SparsecraftError(f"expected a JSON object like {{\"type\": \"owl\", \"m\": 5}}, got {text!r}")
        return value
    return text


def add_prune_arguments(p: Any, sparsity_help: str = "fraction of zeros over the targeted weights") -> None:
    """``--method --criterion --sparsity --pattern --distribution --targets --ignore``."""
    p.add_argument("--method", default=None,
                   help="one-shot method that also updates the kept weights (sparsegpt); default: prune by --criterion")
    p.add_argument("--criterion", default=None, help="which weights go: magnitude (default), wanda, random, ...")
    p.add_argument("--sparsity", default="0.5", help=sparsity_help)
    p.add_argument("--pattern", default="unstructured", help="unstructured, 2:4 (any N:M), row, block:4x4, channel")
    p.add_argument("--distribution", default="uniform", type=json_or_name,
                   help='uniform, erk, global, owl, or JSON such as \'{"type": "owl", "m": 5, "lam": 0.08}\'')
    p.add_argument("--targets", action="append", default=None, help="regex of layers to prune (repeatable)")
    p.add_argument("--ignore", action="append", default=None, help="regex of layers to leave dense (repeatable)")


def add_data_arguments(p: Any, n_calib: int = 32, n_eval: int = 16, calib_aliases: tuple[str, ...] = ()) -> None:
    """``--calib --eval --n-calib --n-eval --seq-len --seed --batch-size`` (``calib_aliases``: more
    spellings of ``--calib``, e.g. ``--data``)."""
    p.add_argument("--calib", *calib_aliases, dest="calib", default="shakespeare",
                   help="calibration text: file, folder of .txt or built-in name")
    p.add_argument("--eval", default=None, help="evaluation text (default: the held-out part of --calib)")
    p.add_argument("--n-calib", type=int, default=n_calib, help=f"calibration windows (default {n_calib})")
    p.add_argument("--n-eval", type=int, default=n_eval, help=f"evaluation windows (default {n_eval})")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the window offsets (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward (default 8)")


def add_run_arguments(p: Any, out_help: str = "run folder (default runs/<job>-<time>)") -> None:
    """``--threads --out --json``."""
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None, help=out_help)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def one_float(text: str, what: str = "sparsity") -> float:
    values = float_list(text, what)
    if len(values) != 1:
        raise SparsecraftError(f"--{what}: give one number here, got {text!r}")
    return values[0]
