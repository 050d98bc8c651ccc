"""Registered scaling laws (see :data:`LAWS`): ``power``, ``chinchilla``, ``average-param``,
``bnsl`` and ``sparse``."""

from sparsecraft.scaling.laws.base import LAWS, LOSS_SPACES, Law, make_law

__all__ = ["LAWS", "LOSS_SPACES", "Law", "make_law"]
