"""Reading runs: CSV, JSON shapes, run folders with nested report.json, clear errors."""

import json

import numpy as np
import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.scaling.io import flatten, load_table, read_records, write_csv


def test_flatten_dotted():
    assert flatten({"a": 1, "final": {"loss": 2, "x": {"y": 3}}}) == {"a": 1, "final.loss": 2, "final.x.y": 3}


def test_csv(tmp_path):
    p = tmp_path / "runs.csv"
    p.write_text("compute,loss,note\n1e3,2.5,a\n1e4,2.0,b\n1e5,,c\n")
    t = load_table(p, "compute", "loss")
    np.testing.assert_allclose(t.x, [1e3, 1e4])
    np.testing.assert_allclose(t.y, [2.5, 2.0])
    assert t.skipped == 1
    with pytest.raises(SparsecraftError, match="unknown column 'flops'.*available: compute, loss, note"):
        load_table(p, "flops", "loss")
    with pytest.raises(SparsecraftError, match="'note' is not a number"):
        load_table(p, "note", "loss")


def test_json_shapes(tmp_path):
    recs = [{"n": 1, "d": 10, "m": {"acc": 0.9}}, {"n": 2, "d": 20, "m": {"acc": 0.95}}]
    for i, doc in enumerate([recs, {"runs": recs}]):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps(doc))
        t = load_table(p, "n,d", "1-m.acc")
        np.testing.assert_allclose(t.x, [[1, 10], [2, 20]])
        np.testing.assert_allclose(t.y, [0.1, 0.05])
    p = tmp_path / "cols.json"
    p.write_text(json.dumps({"x": [1, 2, 3], "y": [3, 2, 1]}))
    np.testing.assert_allclose(load_table(p, "x", "y").y, [3, 2, 1])
    p.write_text(json.dumps({"x": [1, 2, 3], "y": [3, 2]}))
    with pytest.raises(SparsecraftError, match="different lengths"):
        load_table(p, "x", "y")


def test_run_folders(tmp_path):
    for i, (s, loss) in enumerate([(0.5, 0.4), (0.9, 0.6)]):
        d = tmp_path / "sweep" / f"run{i}"
        d.mkdir(parents=True)
        rep = {"job": "train", "sparsity": s, "seed": 0, "final": {"density": 1 - s, "test_loss": loss}}
        (d / "report.json").write_text(json.dumps(rep))
    t = load_table(tmp_path, "final.density", "final.test_loss")
    np.testing.assert_allclose(sorted(t.x), [0.1, 0.5])
    assert {r["run_dir"] for r in t.records} == {str(tmp_path / "sweep" / "run0"), str(tmp_path / "sweep" / "run1")}


def test_missing_and_bad_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparsecraftError, match="no report.json"):
        read_records(tmp_path / "empty")
    with pytest.raises(SparsecraftError, match="neither a file nor a directory"):
        read_records(tmp_path / "nope.csv")
    p = tmp_path / "runs.txt"
    p.write_text("x")
    with pytest.raises(SparsecraftError, match="give a .csv, a .json"):
        read_records(p)


def test_write_csv_roundtrip(tmp_path):
    rows = [{"a": 1, "b": [1, 2]}, {"a": 2, "c": "z"}]
    p = write_csv(tmp_path / "t.csv", rows)
    back = read_records(p)
    assert back[0]["a"] == "1" and back[0]["b"] == "[1, 2]" and back[1]["c"] == "z"


def test_sweep_report_rows_and_filters(tmp_path):
    rep = {
        "job": "digits-sweep",
        "dense_test_accuracy": 0.97,
        "rows": [
            {"criterion": "magnitude", "sparsity": 0.5, "test_accuracy": 0.96},
            {"criterion": "random", "sparsity": 0.5, "test_accuracy": 0.90},
            {"criterion": "magnitude", "sparsity": 0.9, "test_accuracy": 0.80},
        ],
    }
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text(json.dumps(rep))
    t = load_table(tmp_path, "sparsity", "1-test_accuracy", rows="rows", where=["criterion=magnitude"])
    np.testing.assert_allclose(t.x, [0.5, 0.9])
    np.testing.assert_allclose(t.y, [0.04, 0.2])
    assert t.records[0]["dense_test_accuracy"] == 0.97
    with pytest.raises(SparsecraftError, match="no row matches"):
        load_table(tmp_path, "sparsity", "test_accuracy", rows="rows", where=["criterion=none"])
    with pytest.raises(SparsecraftError, match="no record has a list of rows under 'items'"):
        load_table(tmp_path, "sparsity", "test_accuracy", rows="items")
    with pytest.raises(SparsecraftError, match="KEY=VALUE"):
        load_table(tmp_path, "sparsity", "test_accuracy", rows="rows", where=["criterion"])
