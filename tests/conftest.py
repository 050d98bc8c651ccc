"""Shared test settings: torch threads for a 2-core CI machine, the Hypothesis profile (``ci`` =
derandomized when ``$CI`` is set, ``dev`` = random otherwise; tests/hypothesis_profiles.py) and the
session-wide real-model fixtures (tests/real_models.py)."""

import os

import pytest
import torch
from hypothesis import settings

from tests import hypothesis_profiles, real_models

torch.set_num_threads(min(2, os.cpu_count() or 1))

hypothesis_profiles.register()
settings.load_profile(hypothesis_profiles.choose(os.environ))


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M's float32 directory (the first use on a cold cache converts the GGUF, ~20 s)."""
    return real_models.smollm2_dir()


@pytest.fixture(scope="session")
def shakespeare_protocol(smollm2_dir):
    """The published Shakespeare protocol with the SmolLM2 tokenizer, reduced to 4 calibration and
    1 evaluation window of 512 tokens (tokenizing the 1.56M-token corpus once, ~4 s). The windows
    do not depend on the counts: the first k of n calibration windows are those of a k-window run."""
    from transformers import AutoTokenizer

    from sparsecraft.data.text import build_protocol

    real_models.shakespeare_files()
    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    return build_protocol(tok, "shakespeare", n_calib=4, n_eval=1, seq_len=512)
