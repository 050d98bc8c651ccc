"""Fitted laws round-trip through JSON."""

import json

import numpy as np
import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.scaling import fit, load_fit, make_law


def test_save_and_reload_predicts_the_same(tmp_path):
    law = make_law("bnsl", breaks=1)
    x = np.geomspace(10, 1e5, 16)
    y = law.predict([0.2, 5.0, 0.1, 0.8, 3000.0, 0.3], x) * np.exp(0.01 * np.cos(np.arange(16)))
    res = fit(law, x, y, holdout=3, bootstrap=8, x_names=["compute"], y_name="loss")
    path = res.save(tmp_path / "out" / "fit.json")
    again = load_fit(path)
    assert again.law.options() == {"breaks": 1}
    assert again.x_names == ["compute"] and again.y_name == "loss"
    np.testing.assert_allclose(again.predict(x), res.predict(x))
    assert again.rmsle_holdout == pytest.approx(res.rmsle_holdout)
    assert again.intervals() == res.intervals()
    assert json.loads(path.read_text())["format"].startswith("sparsecraft-scaling-fit")


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(SparsecraftError, match="does not exist"):
        load_fit(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SparsecraftError, match="not valid JSON"):
        load_fit(bad)
    bad.write_text(json.dumps({"law": "power"}))
    with pytest.raises(SparsecraftError, match="not a sparsecraft fit file"):
        load_fit(bad)
