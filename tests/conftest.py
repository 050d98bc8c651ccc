"""Shared test settings: torch threads for a 2-core CI machine and the Hypothesis profile
(``ci`` = derandomized when ``$CI`` is set, ``dev`` = random otherwise; tests/hypothesis_profiles.py)."""

import os

import torch
from hypothesis import settings

from tests import hypothesis_profiles

torch.set_num_threads(min(2, os.cpu_count() or 1))

hypothesis_profiles.register()
settings.load_profile(hypothesis_profiles.choose(os.environ))
