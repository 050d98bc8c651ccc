"""Atomic writers: the destination is either the old content or the complete new one."""

from __future__ import annotations

import json

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
