"""Write user files so that a crash never leaves a half-written one in place of a good one.

Every writer here writes to a temporary sibling (same folder, so the final rename is a
single ``os.replace`` on one file system) and renames it over the destination only once the
content is complete; on any error the temporary is removed and the old file stays.

* :func:`write_text` / :func:`write_json` -- a text or JSON file;
* :func:`save_figure` -- a matplotlib figure (closed afterwards);
* :func:`directory` -- a context manager yielding a temporary folder that replaces ``dest``
  (e.g. a Hugging Face ``save_pretrained`` folder) when the block ends without error;
  :func:`recover_directory` puts the previous folder back after a crash inside its swap.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.tmp{suffix}")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """``json.dumps(obj)`` (``default=str`` for paths, dates, ...) written atomically."""
    return write_text(path, json.dumps(obj, indent=indent, default=str))


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig(path, **savefig_kwargs)`` atomically, then close the figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = _tmp_sibling(path, path.suffix)  # keep the extension: matplotlib picks the format by it
    try:
        fig.savefig(tmp, **savefig_kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path


@contextmanager
def directory(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``dest``; it replaces ``dest`` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        old = None
        if dest.exists():  # move the old folder aside first: dest is never missing for long
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
            os.replace(dest, old / dest.name)
        try:
            os.replace(tmp, dest)
        except BaseException:
            if old is not None:
                os.replace(old / dest.name, dest)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def recover_directory(dest: str | os.PathLike) -> bool:
    """Finish what a crash inside :func:`directory` interrupted: if ``dest`` is missing while
    its previous version was already moved aside (``.<name>.old.*/<name>``, the only moment
    ``dest`` does not exist), move that complete previous version back. Returns whether it did.
    """
    dest = Path(dest)
    if dest.exists() or not dest.parent.is_dir():
        return False
    for aside in sorted(dest.parent.glob(f".{glob.escape(dest.name)}.old.*")):
        previous = aside / dest.name
        if previous.exists():
            os.replace(previous, dest)
            shutil.rmtree(aside, ignore_errors=True)
            return True
    return False
