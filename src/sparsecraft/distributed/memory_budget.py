"""How much memory this process may still use: the smallest of the free RAM, the headroom under
an address-space limit (``ulimit -v`` / ``prlimit --as``) and the headroom in its memory cgroup.

Used to decide whether a model is loaded whole or onloaded block by block, whether calibration
activations stay in memory or spill to disk, and to refuse up front a limit too small for one
block (:func:`describe` names the limit that binds).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _vm_size() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _address_space_headroom() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = _vm_size() or 0
    return max(0, soft - used)


def _cgroup_headroom() -> int | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            limit, usage = base / "memory.max", base / "memory.current"
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            limit, usage = base / "memory.limit_in_bytes", base / "memory.usage_in_bytes"
        else:
            continue
        try:
            text = limit.read_text().strip()
            if text == "max" or int(text) >= 1 << 60:
                continue
            return max(0, int(text) - int(usage.read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def headrooms() -> dict[str, int]:
    """Every limit that applies, as bytes still usable: ``ram``, ``address-space``, ``cgroup``."""
    out = {}
    for name, value in (("ram", _meminfo_available()), ("address-space", _address_space_headroom()),
                        ("cgroup", _cgroup_headroom())):  # fmt: skip
        if value is not None:
            out[name] = value
    return out


def budget(override: int | None = None) -> tuple[int, str]:
    """(bytes this process may still allocate, the name of the binding limit).
    ``override`` (bytes, or ``SPARSECRAFT_MEMORY_BUDGET``) replaces the measured value."""
    env = os.environ.get("SPARSECRAFT_MEMORY_BUDGET")
    if override is None and env:
        override = parse_size(env)
    if override is not None:
        return int(override), "given budget"
    rooms = headrooms()
    if not rooms:
        return 1 << 62, "no known limit"
    name = min(rooms, key=lambda k: rooms[k])
    return rooms[name], name


def parse_size(text: str) -> int:
    """'1.5G', '800M', '123456' -> bytes."""
    from sparsecraft.errors import SparsecraftError

    t = str(text).strip().upper().rstrip("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise SparsecraftError(f"bad memory size {text!r}: give bytes or a number with K, M, G (e.g. 1.5G)") from None


def mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"
