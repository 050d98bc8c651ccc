"""Whether the test suite runs under CI: ``$CI`` set to anything but ``""``/``0``/``false``/``no``
(the README's test command, which ``.ci/run`` runs, sets ``CI=true``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

_FALSE = ("", "0", "false", "no")


def in_ci(env: Mapping[str, str] = os.environ) -> bool:
    return env.get("CI", "").strip().lower() not in _FALSE
