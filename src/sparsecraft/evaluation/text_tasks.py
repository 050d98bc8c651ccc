"""Zero-shot tasks generated from installed text, in the lm-evaluation-harness document format.

No benchmark data set can be downloaded here, so the tasks that papers report next to perplexity
(LAMBADA-style cloze, HellaSwag-style multiple choice, WikiText-style rolling perplexity) are
rebuilt from the text of a source (default: the Shakespeare plays of ``sparsecraft.data.text``),
deterministically, from its *evaluation pool* only: the text of the last 10% of the tokens
(:func:`sparsecraft.data.text.split_pools`), which no calibration window ever touches. The
tasks therefore depend on the tokenizer only through where that 90/10 cut falls.

The text is read as speeches: paragraphs separated by blank lines whose first line is the
speaker (``OLIVIA.``) and whose other lines are the verse or prose spoken. Three tasks:

* ``<source>_nextline`` (multiple choice, 4 options, chance 25%): the speaker line and up to
  four lines of a speech, then the true next line against three lines drawn from *other*
  speeches with a word count within +-2 of the true one (so length alone does not give it
  away). Harness fields ``query`` / ``choices`` / ``gold``, metrics ``acc`` and ``acc_norm``.
* ``<source>_cloze`` (LAMBADA-style): a whole speech of at least three lines whose last word
  (letters only, 3+ characters) is removed with the punctuation after it; the model scores the
  word as a continuation. Fields ``context`` / ``target``; metrics ``acc`` (the word is the
  greedy continuation) and ``perplexity`` of the word.
* ``<source>_rolling`` (WikiText-style ``loglikelihood_rolling``): consecutive paragraphs
  joined into documents of at least ``doc_chars`` characters; metrics ``word_perplexity``,
  ``byte_perplexity``, ``bits_per_byte``. Word perplexity is exp(total NLL / words), *not* the
  field's token perplexity over non-overlapping windows (see :mod:`sparsecraft.evaluation.perplexity`).

Choices are drawn with ``random.Random(seed)``: the same text, tokenizer cut, sizes and seed give
the same documents byte for byte.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsecraft.errors import SparsecraftError

KINDS = ("nextline", "cloze", "rolling")
_SPEAKER = re.compile(r"^[A-Z][A-Z' .,&-]*\.$")
_LAST_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]{3,})([^A-Za-z]*)$", re.S)


@dataclass
class Speech:
    speaker: str
    lines: list[str]


def speeches(text: str) -> list[Speech]:
    """The speeches of ``text``: paragraphs whose first line is an upper-case speaker name ending
    in a full stop, followed by at least one spoken line (stage directions are skipped)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in para.strip().splitlines() if ln.strip()]
        if len(lines) >= 2 and _SPEAKER.match(lines[0]):
            spoken = [ln for ln in lines[1:] if not (ln.startswith("[") and ln.endswith("]"))]
            if spoken:
                out.append(Speech(lines[0], spoken))
    return out


def nextline_docs(items: list[Speech], n: int, seed: int = 0, context_lines: int = 4) -> list[dict[str, Any]]:
    """Up to ``n`` multiple-choice documents ``{"query", "choices", "gold"}`` (see module doc)."""
    rng = random.Random(seed)
    pool = [(si, ln) for si, sp in enumerate(items) for ln in sp.lines if len(ln.split()) >= 3]
    by_words: dict[int, list[tuple[int, str]]] = {}
    for si, ln in pool:
        by_words.setdefault(len(ln.split()), []).append((si, ln))
    candidates = [(si, k) for si, sp in enumerate(items) for k in range(1, len(sp.lines))
                  if len(sp.lines[k].split()) >= 3]
    rng.shuffle(candidates)
    docs = []
    for si, k in candidates:
        if len(docs) == n:
            break
        gold_line = items[si].lines[k]
        words = len(gold_line.split())
        near = [ln for w in range(words - 2, words + 3) for s2, ln in by_words.get(w, [])
                if s2 != si and ln != gold_line]
        near = sorted(set(near))
        if len(near) < 3:
            continue
        choices = [gold_line, *rng.sample(near, 3)]
        rng.shuffle(choices)
        context = [items[si].speaker, *items[si].lines[max(0, k - context_lines):k]]
        docs.append({"query": "\n".join(context) + "\n", "choices": choices, "gold": choices.index(gold_line)})
    return docs


def cloze_docs(items: list[Speech], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``n`` cloze documents ``{"context", "target"}``: a speech of 3+ lines without its
    last word; ``target`` is that word with a leading space (the LAMBADA convention)."""
    docs = []
    for sp in items:
        if len(sp.lines) < 3:
            continue
        m = _LAST_WORD.match("\n".join(sp.lines))
        if m is not None:
            docs.append({"context": sp.speaker + "\n" + m.group(1), "target": " " + m.group(2)})
    random.Random(seed).shuffle(docs)
    return docs[:n]


def rolling_docs(text: str, n: int, doc_chars: int = 2000) -> list[dict[str, str]]:
    """The first ``n`` documents ``{"text"}`` of consecutive paragraphs, each >= ``doc_chars``
    characters (the first paragraph, possibly cut by the pool boundary, is dropped)."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()][1:]
    docs, buf = [], []
    for p in paras:
        buf.append(p)
        if sum(len(b) + 2 for b in buf) >= doc_chars:
            docs.append({"text": "\n\n".join(buf)})
            buf = []
            if len(docs) == n:
                break
    return docs


def evaluation_text(tokenizer: Any, source: str | Path = "shakespeare") -> str:
    """The text of the evaluation pool (last 10% of the tokens) of ``source``."""
    from sparsecraft.data.text import load_text, split_pools, tokenize

    _, pool = split_pools(tokenize(load_text(source), tokenizer))
    return tokenizer.decode(pool.tolist())


def build_docs(text: str, n: int = 400, n_rolling: int = 16, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The documents of the three tasks (``kind -> docs``) from an evaluation text."""
    items = speeches(text)
    docs = {"nextline": nextline_docs(items, n, seed), "cloze": cloze_docs(items, n, seed),
            "rolling": rolling_docs(text, n_rolling)}
    for kind, d in docs.items():
        if not d:
            raise SparsecraftError(
                f"the evaluation text has no material for the {kind} task (it needs speeches: a speaker line "
                "such as 'OLIVIA.' followed by spoken lines, paragraphs separated by blank lines)"
            )
    return docs
