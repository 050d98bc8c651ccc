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
