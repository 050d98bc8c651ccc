"""The WGSEF lab experiment on synthetic data: a strong envelope stops at exactly k neurons per
layer (the k-level property) where an equally strong group lasso zeroes every neuron; the table
and the bad-setting errors."""

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.group_envelope import run_regularised


def _data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 784, generator=g), torch.randint(0, 10, (128,), generator=g)
    return x, y, x[:32], y[:32]


def test_strong_envelope_keeps_exactly_k_neurons_and_group_lasso_keeps_none():
    env = run_regularised(_data(), (16, 8), "group-envelope", 1e6, 0.75, 2, 1, 1e-3, 0)
    # 2 steps of 128 images: one prox step, then the prune. k = 16 - 12 = 4 and 8 - 6 = 2: the other
    # 18 of 24 neurons are exactly zero after the prox (neuron norms are distinct after one step)
    assert env["groups"] == 24 and env["zero_frac"] == pytest.approx(18 / 24) and env["kept"] == 6
    lasso = run_regularised(_data(), (16, 8), "group-lasso", 1e6, 0.75, 2, 1, 1e-3, 0)
    assert lasso["zero_frac"] == 1.0  # blind to the target: every neuron goes (they regrow before the prune)
    plain = run_regularised(_data(), (16, 8), "none", 0.0, 0.75, 1, 1, 1e-3, 0)
    assert plain["zero_frac"] == 0.0 and plain["kept"] == 6


def test_tiny_experiment_table(monkeypatch):
    import sparsecraft.lab.group_envelope as mod

    monkeypatch.setattr(mod, "fashion_random", lambda n, nt, seed: _data())
    res = EXPERIMENTS.build({"type": "group-envelope", "sparsities": [0.5], "hidden": [8, 8], "lams_lasso": [1.0],
                             "lams_envelope": [2.0], "n_train": 128, "epochs": 1, "finetune_epochs": 1}).run()
    assert set(res.data["results"]) == {("none", 0.0, 0.5), ("group-lasso", 1.0, 0.5), ("group-envelope", 2.0, 0.5)}
    assert [r[3] for r in res.tables[0].rows] == ["8/16"] * 3


@pytest.mark.parametrize("spec, match", [({"hidden": [8]}, "hidden must be two widths"),
                                         ({"lams_envelope": [0]}, "lams_envelope entry"),
                                         ({"sparsities": [1.5]}, "sparsities entry")])
def test_bad_settings_are_one_line_errors(spec, match):
    with pytest.raises(SparsecraftError, match=match):
        EXPERIMENTS.build({"type": "group-envelope", **spec})
