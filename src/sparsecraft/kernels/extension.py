"""JIT build of the C++ kernels (every ``csrc/*.cpp``, one library) with the machine's compiler.

Each source file registers its ops in the one ``torch.ops.sparsecraft_kernels`` namespace: the
weight-sparse kernels' file with ``TORCH_LIBRARY``, every other file with
``TORCH_LIBRARY_FRAGMENT(sparsecraft_kernels, m)``, so a new kernel is a new ``.cpp`` file and no
edit here.

The extension is compiled on first use with :func:`torch.utils.cpp_extension.load` and cached
in a user cache directory (``$SPARSECRAFT_CACHE_DIR`` or ``~/.cache/sparsecraft/torch_ext``)
under a tag made of the source hash, the torch and Python versions and the flags, so a later
process loads it in milliseconds. Flags: ``-O3`` always; ``-march=native`` and ``-fopenmp``
only when a test compile with the same compiler accepts them (``SPARSECRAFT_NO_NATIVE=1`` turns
``-march=native`` off). No prebuilt binary is ever downloaded.

A failed build is not fatal: :func:`extension_status` returns ``(False, reason)`` and the
``auto`` backend warns with that reason and falls back to torch CSR.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from sparsecraft.errors import SparsecraftError

SOURCE_DIR = Path(__file__).with_name("csrc")
OPS_NAMESPACE = "sparsecraft_kernels"

_lock = threading.Lock()
_state: dict[str, object] = {}
BUILD_WAIT_S = 900.0  # longest wait for another process's build of the same tag




class ExtensionBuildError(SparsecraftError):
    """The C++ kernels could not be compiled or loaded; the message names the reason."""


def cache_dir() -> Path:
    root = os.environ.get("SPARSECRAFT_CACHE_DIR")
    if root:
        return Path(root) / "torch_ext"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparsecraft" / "torch_ext"


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def _accepts(flags: list[str]) -> bool:
    """True when the compiler builds an empty translation unit with ``flags``."""
    cxx = shutil.which(_compiler())
    if cxx is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "t.cpp"
        src.write_text("int main() { return 0; }\n")
        try:
            res = subprocess.run(
                [cxx, *flags, str(src), "-o", str(Path(tmp) / "t")],
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return False
    return res.returncode == 0


def build_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) that this machine's compiler accepts."""
    cflags, ldflags = ["-O3"], []
    if os.environ.get("SPARSECRAFT_NO_NATIVE") != "1" and _accepts(["-march=native"]):
        cflags.append("-march=native")
    if _accepts(["-fopenmp"]):
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags


def sources() -> list[Path]:
    """The C++ files compiled into the extension (sorted, so the tag is stable)."""
    return sorted(SOURCE_DIR.glob("*.cpp"))


def headers() -> list[Path]:
    """The headers the sources include (part of the cache tag, so editing one rebuilds)."""
    return sorted(SOURCE_DIR.glob("*.h"))


def _tag(files: list[Path], cflags: list[str]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    h.update(" ".join([torch.__version__, sys.version, _compiler(), *cflags]).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _build_lock(build_dir: Path, wait_s: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``build_dir/.sparsecraft.lock`` while building.

    The kernel drops a ``flock`` when its holder dies, so a killed build never blocks the next
    one (torch's own ``lock`` file does: its waiter spins forever on a file a dead process left).
    While we hold ours, any torch ``lock`` file in the folder is such a leftover and is removed.
    """
    fd = os.open(build_dir / ".sparsecraft.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ExtensionBuildError(
                        f"another process has been building the kernels in {build_dir} for over "
                        f"{wait_s:.0f} s; stop it or set SPARSECRAFT_CACHE_DIR to another folder"
                    ) from None
                time.sleep(0.2)
        (build_dir / "lock").unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def build(files: list[Path] | None = None, verbose: bool = False) -> None:
    """Compile (or load from the cache) and register ``torch.ops.sparsecraft_kernels``."""
    if shutil.which(_compiler()) is None:
        raise ExtensionBuildError(
            f"no C++ compiler found ({_compiler()!r} is not on PATH; set CXX or install g++)"
        )
    files = sources() if files is None else files
    if not files:
        raise ExtensionBuildError(f"no kernel sources (*.cpp) in {SOURCE_DIR}")
    from torch.utils import cpp_extension

    cflags, ldflags = build_flags()
    build_dir = cache_dir() / _tag([*files, *headers()], cflags)
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExtensionBuildError(f"cannot create the kernel cache folder {build_dir}: {e}") from e
    name = f"sparsecraft_kernels_{build_dir.name}"
    with _build_lock(build_dir, BUILD_WAIT_S):
        try:
            cpp_extension.load(
                name=name,
                sources=[str(f) for f in files],
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=verbose or os.environ.get("SPARSECRAFT_DEBUG_BUILD") == "1",
            )
        except Exception as e:  # compiler errors surface as RuntimeError/CalledProcessError
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            errors = [ln for ln in lines if "error:" in ln] or [
                ln for ln in lines if "error" in ln.lower()
            ]
            detail = errors[0] if errors else (lines[-1] if lines else type(e).__name__)
            raise ExtensionBuildError(
                f"building {', '.join(f.name for f in files)} with {_compiler()} failed: "
                f"{detail[:300]} (build dir {build_dir}; SPARSECRAFT_DEBUG_BUILD=1 shows the full log)"
            ) from e


def extension_status() -> tuple[bool, str]:
    """``(True, "ok ...")`` once the kernels are loaded, else ``(False, reason)``; builds at most
    once per process (a failure is remembered)."""
    with _lock:
        if "ok" not in _state:
            if os.environ.get("SPARSECRAFT_DISABLE_EXTENSION") == "1":
                _state.update(ok=False, reason="disabled by SPARSECRAFT_DISABLE_EXTENSION=1")
            else:
                try:
                    build()
                    avx = bool(getattr(torch.ops, OPS_NAMESPACE).has_avx512())
                    _state.update(ok=True, reason=f"ok (avx512={'yes' if avx else 'no'})")
                except ExtensionBuildError as e:
                    _state.update(ok=False, reason=str(e))
        return bool(_state["ok"]), str(_state["reason"])


def reset_extension_state() -> None:
    """Forget the remembered build result (tests)."""
    with _lock:
        _state.clear()


def ops():
    """``torch.ops.sparsecraft_kernels``; raises :class:`ExtensionBuildError` if unavailable."""
    if _state.get("ok") is True:  # fast path: no lock once loaded
        return getattr(torch.ops, OPS_NAMESPACE)
    ok, reason = extension_status()
    if not ok:
        raise ExtensionBuildError(f"sparsecraft C++ kernels unavailable: {reason}")
    return getattr(torch.ops, OPS_NAMESPACE)
