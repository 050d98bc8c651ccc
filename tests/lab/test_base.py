"""The lab registry finds every experiment module; tables render; knob checks give one-line errors."""

import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS, LabResult, LabTable
from sparsecraft.lab.base import check_float, check_int


def test_every_lab_module_registers_its_experiment():
    assert {"sparse-coding", "dendrites", "retrieval-margin", "kronecker-sbl", "sparse-ift",
            "group-envelope", "data-pruning", "machine-unlearning", "continual-dst", "sparse-search",
            "dsl-recommendation", "ftp-router", "batchtopk-sae", "random-support",
            "knowledge-capacity", "pst", "mad"} <= set(EXPERIMENTS.names())
    for _, cls in EXPERIMENTS:
        assert cls.paper and cls.claim


def test_listed_by_the_cli():
    from sparsecraft.cli.cmd_list import collect

    assert "sparse-coding" in dict(collect()["lab experiments"])


def test_markdown_rendering():
    t = LabTable("cap", ["a", "b"], [["1", "2"]])
    assert t.to_markdown() == "cap\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    r = LabResult("x", "claim", [t], "found")
    assert r.to_markdown().startswith("Claim (paper): claim\n\ncap") and r.to_markdown().endswith("found")


@pytest.mark.parametrize("value", [True, 1.5, "3", -1])
def test_check_int_rejects(value):
    with pytest.raises(SparsecraftError, match="k must be an integer >= 0"):
        check_int("k", value, 0)


@pytest.mark.parametrize("value", [float("nan"), 0.0, 2.0, "x", False])
def test_check_float_rejects(value):
    with pytest.raises(SparsecraftError, match=r"q must be a number in \(0, 1\]"):
        check_float("q", value, 0, 1, open_low=True)
    assert check_float("q", 1, 0, 1) == 1.0


def test_unknown_experiment_names_the_allowed_ones():
    with pytest.raises(SparsecraftError, match="unknown experiment 'nope'; allowed: .*dendrites"):
        EXPERIMENTS.get("nope")
