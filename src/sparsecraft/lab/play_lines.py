"""An offline labelled text task for fine-tuning experiments: which play is this passage from?

Built from the 42 Shakespeare plays the ``shakespeare`` package ships
(:func:`sparsecraft.data.text.shakespeare_files`); no download. An example is ``lines``
consecutive spoken lines of one play, its label the index of the play in ``plays``. Dropped: the
text before the first ``ACT I`` (``ACT 1``, ``ACT FIRST``) heading (the list of persons), stage
directions ``[...]`` (also when they span lines), scene headings and lines of fewer than
``min_words`` words (which include the speaker tags). Split (deterministic, no randomness): the
first ``train_fraction`` of each play's passages is the training pool, the rest the test pool, so
test passages come from scenes never seen in training; ``n_train`` / ``n_test`` passages per play
are taken evenly spaced from each pool.

:class:`EncoderClassifier` puts a linear head on a Hugging Face encoder (mean pooling over the
attention mask, as sentence-transformers' all-MiniLM-L6-v2 does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.data.text import shakespeare_files
from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import check_float, check_int

ACT_ONE = re.compile(r"^\s*ACT\s+(I|1|FIRST)\b", re.IGNORECASE)
SCENE = re.compile(r"^SCENE\b", re.IGNORECASE)
STAGE_DIRECTION = re.compile(r"\[[^\[\]]*\]")


def play_names() -> list[str]:
    """The plays available: the file names of the shipped texts without ``_gut.txt``."""
    return [p.name.removesuffix("_gut.txt") for p in shakespeare_files()]


def spoken_lines(play: str, min_words: int = 4) -> list[str]:
    """The spoken lines of ``play`` in order: from its first ``ACT I`` heading on (the whole text
    when there is none), without stage directions and lines of fewer than ``min_words`` words."""
    files = {p.name.removesuffix("_gut.txt"): p for p in shakespeare_files()}
    if play not in files:
        raise SparsecraftError(f"unknown play {play!r}; allowed: {', '.join(sorted(files))}")
    raw = files[play].read_text(encoding="utf-8", errors="replace").splitlines()
    start = next((i for i, ln in enumerate(raw) if ACT_ONE.match(ln)), 0)
    out = []
    in_direction = False  # inside a stage direction that spans lines (it ends at "]" or a blank line)
    for ln in raw[start:]:
        if in_direction:
            in_direction = "]" not in ln and bool(ln.strip())
            continue
        ln = STAGE_DIRECTION.sub(" ", ln)
        if "[" in ln:
            ln, in_direction = ln.split("[")[0], True
        ln = " ".join(ln.split("]")[-1].split())
        if len(ln.split()) >= min_words and not ln.isupper() and not SCENE.match(ln):
            out.append(ln)
    return out


def evenly(items: list, n: int) -> list:
    """``n`` items of ``items`` evenly spaced (all of them when there are not more than ``n``)."""
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


@dataclass
class PlayTask:
    """Passages and labels of the two splits; ``plays[label]`` names a label."""

    plays: tuple[str, ...]
    train_texts: list[str]
    train_labels: torch.Tensor
    test_texts: list[str]
    test_labels: torch.Tensor


def play_task(plays: tuple[str, ...], n_train: int, n_test: int, *, lines: int = 2, min_words: int = 4,
              train_fraction: float = 0.8) -> PlayTask:
    """The "which play" task over ``plays`` (see the module docstring for the split)."""
    if len(plays) < 2 or len(set(plays)) != len(plays):
        raise SparsecraftError(f"plays must name at least two different plays, got {list(plays)}")
    check_int("n_train", n_train, 1)
    check_int("n_test", n_test, 1)
    check_int("lines", lines, 1)
    check_float("train_fraction", train_fraction, 0.0, 1.0, open_low=True)
    tr_x: list[str] = []
    tr_y: list[int] = []
    te_x: list[str] = []
    te_y: list[int] = []
    for label, play in enumerate(plays):
        spoken = spoken_lines(play, min_words)
        passages = [" ".join(spoken[i:i + lines]) for i in range(0, len(spoken) - lines + 1, lines)]
        cut = int(len(passages) * train_fraction)
        train, test = evenly(passages[:cut], n_train), evenly(passages[cut:], n_test)
        if len(train) < n_train or len(test) < n_test:
            raise SparsecraftError(f"{play} has {cut} training and {len(passages) - cut} test passages of "
                                   f"{lines} lines; asked for {n_train} and {n_test}")
        tr_x += train
        tr_y += [label] * len(train)
        te_x += test
        te_y += [label] * len(test)
    return PlayTask(tuple(plays), tr_x, torch.tensor(tr_y), te_x, torch.tensor(te_y))


class EncoderClassifier(nn.Module):
    """``head(mean-pool(encoder(ids)))``: a linear classification head on a HF encoder."""

    def __init__(self, encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        check_int("n_classes", n_classes, 2)
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the last hidden states over the non-padding positions."""
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))


@torch.no_grad()
def accuracy(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 64) -> float:
    """Classification accuracy of ``model(ids, mask)`` against ``labels``."""
    model.eval()
    hits = 0
    for i in range(0, len(ids), batch_size):
        hits += int((model(ids[i:i + batch_size], mask[i:i + batch_size]).argmax(-1) == labels[i:i + batch_size]).sum())
    return hits / len(ids)


def probe_head(model: EncoderClassifier, ids: torch.Tensor, attn: torch.Tensor, labels: torch.Tensor, *,
               steps: int = 300, lr: float = 1e-2, batch_size: int = 64) -> None:
    """Fit ``model.head`` on the frozen dense encoder's features (a linear probe, full-batch
    Adam): every method then starts from the same head instead of a random one."""
    with torch.no_grad():
        model.eval()
        feats = torch.cat([model.features(ids[i:i + batch_size], attn[i:i + batch_size])
                           for i in range(0, len(ids), batch_size)])
    opt = torch.optim.Adam(model.head.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model.head(feats), labels).backward()
        opt.step()
