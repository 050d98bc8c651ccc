"""The profile rule: CI runs are derandomized, local runs explore (tests/hypothesis_profiles.py)."""

import os

import pytest
from hypothesis import settings

from tests import hypothesis_profiles

# created at import, as every ``@settings(max_examples=...)`` decorator in tests/ is
AT_IMPORT = settings(max_examples=5)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, "dev"),
        ({"CI": "true"}, "ci"),
        ({"CI": "1"}, "ci"),
        ({"CI": "false"}, "dev"),
        ({"CI": "0"}, "dev"),
        ({"CI": ""}, "dev"),
        ({"CI": "true", "HYPOTHESIS_PROFILE": "dev"}, "dev"),
        ({"HYPOTHESIS_PROFILE": "ci"}, "ci"),
    ],
)
def test_choose(env, name):
    assert hypothesis_profiles.choose(env) == name


def test_profiles_differ_only_in_randomness():
    ci, dev = settings.get_profile("ci"), settings.get_profile("dev")
    assert ci.derandomize and ci.database is None and ci.print_blob
    assert not dev.derandomize
    for s in (ci, dev):
        assert s.max_examples == hypothesis_profiles.MAX_EXAMPLES and s.deadline is None


def test_the_loaded_profile_follows_the_environment():
    """Under the README's test command (CI=true) this run itself is derandomized."""
    name = hypothesis_profiles.choose(os.environ)
    assert settings.get_current_profile_name() == name
    assert settings().derandomize == (name == "ci")


def test_per_test_settings_inherit_the_profile():
    """``@settings(max_examples=...)`` on a test is created when its module is imported, after
    conftest loaded the profile, so it keeps the profile's derandomize and no deadline (a test's
    own settings must not make CI random)."""
    assert AT_IMPORT.derandomize == (hypothesis_profiles.choose(os.environ) == "ci")
    assert AT_IMPORT.deadline is None
