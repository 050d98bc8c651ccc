"""One-shot (post-training) pruning: :func:`prune` (the library's one door, also
``sparsecraft.prune``), the block-by-block calibration engine, SparseGPT, OWL budgets and
SquareHead recovery fine-tuning."""

from sparsecraft.oneshot.api import prune
from sparsecraft.oneshot.base import ONESHOT, make_pruner
from sparsecraft.oneshot.blockwise import find_blocks

__all__ = ["ONESHOT", "find_blocks", "make_pruner", "prune"]
