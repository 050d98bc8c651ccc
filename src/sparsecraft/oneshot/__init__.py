"""One-shot (post-training) pruning of transformers with calibration data: magnitude, Wanda,
SparseGPT (unstructured and N:M), OWL budgets, and SquareHead recovery fine-tuning."""

from sparsecraft.oneshot.api import OneShotResult, prune_model
from sparsecraft.oneshot.base import ONESHOT, make_pruner
from sparsecraft.oneshot.blockwise import find_blocks

__all__ = ["ONESHOT", "OneShotResult", "find_blocks", "make_pruner", "prune_model"]
