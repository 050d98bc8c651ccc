"""Write user files so that a crash never leaves a half-written one in place of a good one.

Every writer here writes into a temporary sibling folder (same file system, so the final
rename is a single ``os.replace``), flushes the file to disk and renames it over the
destination only once the content is complete; on any error the temporary is removed and
the old file stays. The file is written inside a private folder, under the destination's
own name, so whatever a writer creates beside it (``safetensors`` writes through its own
``.tmpXXXXXX`` file) goes with that folder, and a writer that picks its format by the file
extension (matplotlib) sees the right one. This module is the one place that does so:

* :func:`replacing` -- a context manager yielding the temporary path for any writer that
  wants a file name (safetensors, CSV, ...);
* :func:`write_text` / :func:`write_json` -- a text or JSON file;
* :func:`write_safetensors` -- a safetensors file (``safetensors.torch.save_file``);
* :func:`save_figure` -- a matplotlib figure (closed afterwards);
* :func:`directory` -- a context manager yielding a temporary folder that replaces ``dest``
  (e.g. a Hugging Face ``save_pretrained`` folder) when the block ends without error;
  :func:`recover_directory` puts the previous folder back after a crash inside its swap.

Temporary names are ``.<name>.sctmp-<host>-<pid>-<token>`` (``sctmpold`` for a folder
moved aside during a swap). A process killed with SIGKILL cannot clean up after itself, so
every write first removes the temporaries of *its own destination* left by processes of
this host that are no longer running (a live writer's temporary is never touched), and
puts back a folder that a killed swap had moved aside when the destination is missing.
Files and folders get the usual permissions (``0o666`` / ``0o777`` minus the umask), like
any other tool, not the ``0o600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import stat
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sparsecraft.errors import SparsecraftError

_TAG = "sctmp"
_ASIDE = "sctmpold"
_MAX_BASE = 120  # keep temporary names under the usual 255-byte limit


def _host() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _base(dest: Path) -> str:
    return dest.name[:_MAX_BASE]


def temp_sibling(dest: str | os.PathLike, aside: bool = False, pid: int | None = None) -> Path:
    """A fresh temporary name next to ``dest`` (``aside``: for the old folder of a swap)."""
    dest = Path(dest)
    tag = _ASIDE if aside else _TAG
    pid = os.getpid() if pid is None else pid
    return dest.with_name(f".{_base(dest)}.{tag}-{_host()}-{pid}-{secrets.token_hex(4)}")


def _pattern(dest: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(_base(dest))}\.({_TAG}|{_ASIDE})-([0-9a-f]{{8}})-(\d+)-[0-9a-f]+")


def _running(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # never guess on other systems: keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_temps(dest: str | os.PathLike) -> list[Path]:
    """Temporaries of ``dest`` (our naming) left by writers of this host that have died."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    pattern, host, out = _pattern(dest), _host(), []
    for entry in dest.parent.iterdir():
        m = pattern.fullmatch(entry.name)
        if m and m.group(2) == host and not _running(int(m.group(3))):
            out.append(entry)
    return sorted(out)


def recover_directory(dest: str | os.PathLike) -> bool:
    """Finish what a crash inside :func:`directory` interrupted: if ``dest`` is missing while
    a writer that has died had already moved its previous version aside (the only moment
    ``dest`` does not exist), move that complete previous version back. Returns whether it
    did. Readers call it before they read; every write to ``dest`` does it first."""
    dest = Path(dest)
    if os.path.lexists(dest):
        return False
    for entry in stale_temps(dest):
        if f".{_ASIDE}-" in entry.name and entry.is_dir():
            os.replace(entry, dest)
            return True
    return False


def clean_stale(dest: str | os.PathLike) -> None:
    """Remove the stale temporaries of ``dest``; if ``dest`` is missing because a swap was
    killed between its two renames, first put the old folder back."""
    dest = Path(dest)
    recover_directory(dest)
    for entry in stale_temps(dest):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _prepare(dest: str | os.PathLike, want_dir: bool) -> Path:
    """Check that ``dest`` can be written as a file (or folder) and create its parents."""
    dest = Path(dest)
    if want_dir and dest.exists() and not dest.is_dir():
        raise SparsecraftError(f"output {str(dest)!r} is an existing file; a folder is written here: give a new path")
    if not want_dir and dest.is_dir():
        raise SparsecraftError(f"output {str(dest)!r} is an existing folder; a file is written here: give a file path")
    parent = dest.parent
    if parent.exists() and not parent.is_dir():
        raise SparsecraftError(f"cannot write {str(dest)!r}: {str(parent)!r} is a file, not a folder")
    parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest)
    return dest


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # folders cannot be fsynced on every system
        pass
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary file with ``path``'s name in a private folder next to it;
    it is flushed, given the umask's permissions and renamed over ``path`` when the block
    ends without error. The private folder goes in every case."""
    path = _prepare(path, want_dir=False)
    box = temp_sibling(path)
    box.mkdir()
    mode = stat.S_IMODE(box.stat().st_mode) & 0o666  # 0o666 minus the umask, read without changing it
    tmp = box / path.name
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        yield tmp
        if stat.S_IMODE(tmp.stat().st_mode) != mode:  # writers that make their own temp file (0o600)
            os.chmod(tmp, mode)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        shutil.rmtree(box, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """``json.dumps(obj)`` (``default=str`` for paths, dates, ...) written atomically."""
    return write_text(path, json.dumps(obj, indent=indent, default=str))


def write_safetensors(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file(tensors, path, metadata)`` atomically."""
    from safetensors.torch import save_file

    with replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig(path, **savefig_kwargs)`` atomically, then close the figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with replacing(path) as tmp:  # the temporary keeps the extension matplotlib picks the format by
            fig.savefig(tmp, **savefig_kwargs)
    finally:
        plt.close(fig)
    return path


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) every entry of ``old`` that the new folder does not have."""
    for entry in old.iterdir():
        target = new / entry.name
        if os.path.lexists(target):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(target))


@contextmanager
def directory(dest: str | os.PathLike, keep_others: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``dest``; it replaces ``dest`` on success.
    ``keep_others``: entries of the old ``dest`` that the block did not write are carried
    over (hard links where possible), as when writing into an existing folder.

    The swap is two renames (old folder aside, new one in): a process killed between them
    leaves ``dest`` missing and the old folder aside, which the next write to ``dest`` or a
    reader's :func:`recover_directory` puts back."""
    dest = _prepare(dest, want_dir=True)
    tmp = temp_sibling(dest)
    tmp.mkdir()  # 0o777 minus the umask
    try:
        yield tmp
        if keep_others and dest.is_dir():
            _carry_over(dest, tmp)
        aside = None
        if os.path.lexists(dest):  # move the old folder aside first: dest is never missing for long
            aside = temp_sibling(dest, aside=True)
            os.replace(dest, aside)
        try:
            os.replace(tmp, dest)
        except BaseException:
            if aside is not None:
                os.replace(aside, dest)
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        _fsync(dest.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
