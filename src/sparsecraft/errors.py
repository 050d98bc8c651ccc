"""Exceptions raised for user mistakes.

Every error a user can cause derives from :class:`SparsecraftError`; the command line
prints its message on one line and exits non-zero, without a traceback.
"""

from __future__ import annotations


class SparsecraftError(Exception):
    """A user-facing error: bad input, bad recipe, bad file. The message says what was
    wrong and what is allowed."""


class ShapeError(SparsecraftError):
    """A layer's weight shape does not fit the requested pattern."""


class RecipeError(SparsecraftError):
    """A recipe key is unknown, has the wrong type, or names an unknown registry entry."""


class CheckpointError(SparsecraftError):
    """A checkpoint is missing, truncated, corrupted or does not match the model."""


class MissingDependencyError(SparsecraftError):
    """An optional package is needed; the message gives the pip command."""
