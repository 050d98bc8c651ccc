"""Atomic writers: the destination is either the old content or the complete new one."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from sparsecraft import atomic
from sparsecraft.errors import SparsecraftError


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


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_stale_temps_of_dead_writers_go_on_the_next_write_live_ones_stay(tmp_path):
    p = tmp_path / "a.json"
    dead = atomic.temp_sibling(p, pid=_dead_pid())
    dead.write_bytes(b"\0" * 1000)
    live = atomic.temp_sibling(p, pid=os.getppid())  # the pytest runner's parent: running
    live.write_bytes(b"half")
    other = tmp_path / ".b.json.sctmp-00000000-1-ab"  # someone else's destination: not ours to clean
    other.write_bytes(b"x")
    atomic.write_json(p, {"x": 1})
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(["a.json", live.name, other.name])


def test_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        f = atomic.write_text(tmp_path / "t.txt", "x")
        with atomic.directory(tmp_path / "d") as tmp:
            (tmp / "w").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_writing_a_file_over_a_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(SparsecraftError, match="existing folder"):
        atomic.write_text(tmp_path / "out", "x")
    (tmp_path / "f").write_text("keep")
    with pytest.raises(SparsecraftError, match="existing file"):
        with atomic.directory(tmp_path / "f"):
            pass
    assert (tmp_path / "f").read_text() == "keep"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["f", "out"]


def test_directory_keep_others_carries_the_old_entries_over(tmp_path):
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "config.json").write_text("old")
    (dest / "README.md").write_text("mine")
    (dest / "sub").mkdir()
    (dest / "sub" / "x").write_text("deep")
    with atomic.directory(dest, keep_others=True) as tmp:
        (tmp / "config.json").write_text("new")
    assert (dest / "config.json").read_text() == "new" and (dest / "README.md").read_text() == "mine"
    assert (dest / "sub" / "x").read_text() == "deep"


KILLED_SWAP = """
import os, signal, sys
from sparsecraft import atomic
real, calls = os.replace, []
def replace(a, b):
    calls.append(a)
    if len(calls) == 2:  # the old folder is aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
    real(a, b)
os.replace = replace
with atomic.directory(sys.argv[1]) as tmp:
    (tmp / "weights").write_text("v2")
"""


def test_a_swap_killed_between_its_renames_is_undone_by_the_next_write(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "weights").write_text("v1")
    proc = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(dest)], env=_env())
    assert proc.returncode == -signal.SIGKILL and not dest.exists()
    with pytest.raises(RuntimeError):
        with atomic.directory(dest):
            raise RuntimeError("this write fails too")
    assert (dest / "weights").read_text() == "v1"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model"]


def _env():
    src = str(Path(atomic.__file__).parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}

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
