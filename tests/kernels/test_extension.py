"""The JIT build: flags, cache location, and the failure path (clear message, torch-csr fallback)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsecraft.kernels import SparseLinear, convert, extension
from sparsecraft.kernels.calibrate import _warned, choose_backend
from tests.kernels.helpers import sparse_weight


@pytest.fixture
def broken_build(monkeypatch, tmp_path):
    bad = tmp_path / "src" / "broken.cpp"
    bad.parent.mkdir()
    bad.write_text("this is not C++ at all;\n")
    monkeypatch.setattr(extension, "SOURCE_DIR", bad.parent)
    monkeypatch.setenv("SPARSECRAFT_CACHE_DIR", str(tmp_path / "cache"))
    extension.reset_extension_state()
    _warned.clear()
    yield bad
    extension.reset_extension_state()
    _warned.clear()


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSECRAFT_CACHE_DIR", str(tmp_path))
    assert extension.cache_dir() == tmp_path / "torch_ext"


def test_missing_compiler_message(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(extension.ExtensionBuildError, match="no C\\+\\+ compiler found"):
        extension.build()


def test_disabled_extension_is_reported(monkeypatch):
    monkeypatch.setenv("SPARSECRAFT_DISABLE_EXTENSION", "1")
    extension.reset_extension_state()
    try:
        ok, reason = extension.extension_status()
        assert not ok and "SPARSECRAFT_DISABLE_EXTENSION" in reason
        with pytest.raises(extension.ExtensionBuildError, match="unavailable"):
            extension.ops()
    finally:
        extension.reset_extension_state()


def test_compile_error_names_the_file(broken_build):
    ok, reason = extension.extension_status()
    assert not ok and "broken.cpp" in reason


def test_auto_warns_and_falls_back_to_torch_csr(monkeypatch):
    monkeypatch.setenv("SPARSECRAFT_DISABLE_EXTENSION", "1")
    extension.reset_extension_state()
    _warned.clear()
    seen = []

    def measure(weight, batch, names):
        seen.append(list(names))
        return {n: (0.1 if n == "torch-csr" else 1.0) for n in names}

    try:
        with pytest.warns(RuntimeWarning, match="C\\+\\+ kernels unavailable.*torch-csr"):
            d = choose_backend(sparse_weight(8, 32, 0.9), measure=measure)
        assert d.backend == "torch-csr"
        assert not {"csr16", "bitmap", "nm24"} & set(seen[0])
        lin = nn.Linear(32, 8)
        with torch.no_grad():
            lin.weight.copy_(sparse_weight(8, 32, 0.9))
        model = nn.Sequential(lin)
        rep = convert(model, measure=measure)
        assert isinstance(model[0], SparseLinear) and rep.layers[0].backend == "torch-csr"
    finally:
        extension.reset_extension_state()
        _warned.clear()


def _tiny_source(monkeypatch, tmp_path):
    src = tmp_path / "src" / "tiny.cpp"
    src.parent.mkdir()
    src.write_text("int sparsecraft_tiny_probe() { return 7; }\n")
    monkeypatch.setattr(extension, "SOURCE_DIR", src.parent)
    monkeypatch.setenv("SPARSECRAFT_CACHE_DIR", str(tmp_path / "cache"))
    return src


def test_a_lock_file_left_by_a_killed_build_does_not_block_the_next(monkeypatch, tmp_path):
    """torch's ``lock`` file outlives a killed build; its waiter would spin forever (a CI hang)."""
    src = _tiny_source(monkeypatch, tmp_path)
    cflags, _ = extension.build_flags()
    build_dir = extension.cache_dir() / extension._tag([src], cflags)
    build_dir.mkdir(parents=True)
    (build_dir / "lock").touch()
    monkeypatch.setattr(extension, "BUILD_WAIT_S", 5.0)
    extension.build()
    assert not (build_dir / "lock").exists()
    assert list(build_dir.glob("*.so"))


def test_a_build_held_by_a_live_process_times_out_with_a_clear_error(tmp_path):
    import fcntl
    import os

    lock = tmp_path / ".sparsecraft.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    pid = os.fork()
    if pid == 0:  # the child holds the lock until killed
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"x")
        import time

        time.sleep(60)
        os._exit(0)
    try:
        while lock.stat().st_size == 0:
            pass
        with pytest.raises(extension.ExtensionBuildError, match="another process has been building"):
            with extension._build_lock(tmp_path, wait_s=0.5):
                pass
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    # the holder is dead: the kernel dropped its lock, the next build goes ahead at once
    with extension._build_lock(tmp_path, wait_s=0.5):
        pass
