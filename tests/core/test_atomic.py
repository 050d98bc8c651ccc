"""Atomic writers: the destination is either the old content or the complete new one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from sparsecraft import atomic


def test_write_text_and_json_replace_and_leave_no_temp(tmp_path):
    p = tmp_path / "a.json"
    atomic.write_text(p, "old")
    atomic.write_json(p, {"x": 1, "path": tmp_path})
    assert json.loads(p.read_text()) == {"x": 1, "path": str(tmp_path)}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.json"]


def test_failed_figure_keeps_old_file(tmp_path):
    p = tmp_path / "plot.png"
    p.write_bytes(b"good")

    class Broken(Figure):
        def savefig(self, path, **kw):
            open(path, "wb").write(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.save_figure(Broken(), p)
    assert p.read_bytes() == b"good"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["plot.png"]


def test_figure_keeps_png_extension(tmp_path):
    seen = []

    class Fig(Figure):
        def savefig(self, path, **kw):
            seen.append(path.suffix)
            open(path, "wb").write(b"png")

    atomic.save_figure(Fig(), tmp_path / "p.png", dpi=50)
    assert seen == [".png"] and (tmp_path / "p.png").read_bytes() == b"png"


def test_directory_replaces_on_success_and_keeps_old_on_error(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic.directory(dest) as tmp:
            (tmp / "weights").write_text("partial")
            raise RuntimeError("crash while saving")
    assert (dest / "weights").read_text() == "v1"
    with atomic.directory(dest) as tmp:
        (tmp / "weights").write_text("v2")
    assert (dest / "weights").read_text() == "v2"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model"]  # no temp or old folders left


_CRASH_IN_SWAP = """
import os, sys
from pathlib import Path
from sparsecraft import atomic

real_replace, calls = os.replace, []

def replace_then_die(src, dst):  # the process dies between the two renames of the swap
    calls.append(src)
    if len(calls) == 2:
        os._exit(9)
    real_replace(src, dst)

os.replace = replace_then_die
with atomic.directory(Path(sys.argv[1])) as tmp:
    (tmp / "f").write_text("new")
"""


def test_recover_directory_after_a_crash_inside_the_swap(tmp_path):
    dest = tmp_path / "checkpoint"
    dest.mkdir()
    (dest / "f").write_text("old")
    env = {**os.environ, "PYTHONPATH": str(Path(atomic.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", _CRASH_IN_SWAP, str(dest)], env=env, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert not dest.exists()  # the crash window: old moved aside, new not yet in place
    assert atomic.recover_directory(dest) is True
    assert (dest / "f").read_text() == "old"
    assert not any(p.name.startswith(".checkpoint.old.") for p in tmp_path.iterdir())
    assert atomic.recover_directory(dest) is False  # nothing to do once dest exists
