"""Hypothesis profiles of the test suite and the rule that picks one (loaded by tests/conftest.py).

* ``ci``: derandomized (examples are a fixed function of the test's source and the Hypothesis
  version, so a CI run never depends on luck), no example database, a failing example printed
  with its reproduction blob, a fixed ``max_examples``, no deadline (a 2-core machine shared by
  several jobs would make timing-based failures flaky).
* ``dev``: the same size and no deadline, but random: every local run explores new examples
  (and replays earlier failures from the local ``.hypothesis/`` database).

Choice: ``$HYPOTHESIS_PROFILE`` when given, else ``ci`` when ``$CI`` is set to anything but
``""``/``0``/``false``/``no``, else ``dev``. The README's test command (which ``.ci/run`` runs)
sets ``CI=true``. A counterexample found by ``dev`` is kept as an explicit ``@example``.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import HealthCheck, settings

from tests.ci import in_ci

MAX_EXAMPLES = 40
_COMMON = {"max_examples": MAX_EXAMPLES, "deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


def register() -> None:
    """Register ``ci`` and ``dev`` (both from Hypothesis' own defaults, whatever is loaded now)."""
    base = settings.get_profile("default")
    settings.register_profile("ci", base, derandomize=True, print_blob=True, **_COMMON)
    settings.register_profile("dev", base, derandomize=False, print_blob=False, **_COMMON)


def choose(env: Mapping[str, str]) -> str:
    """The profile name for the environment ``env`` (see the module docstring)."""
    if env.get("HYPOTHESIS_PROFILE"):
        return env["HYPOTHESIS_PROFILE"]
    return "ci" if in_ci(env) else "dev"
