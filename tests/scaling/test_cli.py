"""The fit / plan / steplaw / sweep-train commands end to end."""

import json

import numpy as np

from sparsecraft.cli.main import main
from sparsecraft.scaling import load_fit, make_law
from sparsecraft.scaling.reference import BNSL_ADDITION_X, BNSL_ADDITION_Y


def test_fit_command_writes_json_and_png(tmp_path, capsys):
    csv = tmp_path / "runs.csv"
    csv.write_text("compute,loss\n" + "".join(f"{x},{y}\n" for x, y in zip(BNSL_ADDITION_X, BNSL_ADDITION_Y)))
    out = tmp_path / "fit"
    rc = main(
        [
            "fit",
            str(csv),
            "--law",
            "bnsl",
            "--x",
            "compute",
            "--y",
            "loss",
            "--breaks",
            "1",
            "--holdout",
            "3",
            "--bootstrap",
            "10",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert abs(summary["params"]["d1"] / 612.6 - 1) < 0.05
    assert summary["n_holdout"] == 3 and summary["intervals"] is not None
    assert (out / "fit.png").stat().st_size > 1000
    assert load_fit(out / "fit.json").law.options() == {"breaks": 1}


def test_fit_command_user_error_is_one_line(tmp_path, capsys):
    csv = tmp_path / "runs.csv"
    csv.write_text("x,y\n1,1\n2,0.5\n")
    assert main(["fit", str(csv), "--law", "power", "--x", "x", "--y", "y", "--no-plot", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: too few points") and err.count("\n") == 1


def test_plan_command(tmp_path, capsys):
    law = make_law("sparse")
    x = np.array([(s, n, d) for s in (0, 0.5, 0.75, 0.875) for n in (1e6, 1e7, 3e7) for d in (1e8, 1e9, 1e10)])
    y = law.predict([30.0, 0.8, 8.0, 0.25, 4e7, 0.3, 1.5], x)
    csv = tmp_path / "runs.csv"
    csv.write_text("S,N,D,loss\n" + "".join(f"{a},{b},{c},{v}\n" for (a, b, c), v in zip(x, y)))
    out = tmp_path / "fit"
    assert (
        main(["fit", str(csv), "--law", "sparse", "--x", "S,N,D", "--y", "loss", "--bootstrap", "0", "--out", str(out)])
        == 0
    )
    capsys.readouterr()
    assert (
        main(["plan", "--fit", str(out / "fit.json"), "--budget-flops", "1e18", "--params-max", "1e8", "--json"]) == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert plan["best"]["sparsity"] > 0 and plan["loss_gain_vs_dense"] > 0
    assert main(["plan", "--fit", str(out / "fit.json"), "--budget-flops", "1e18"]) == 0
    assert "recommend: sparsity" in capsys.readouterr().out


def test_steplaw_command(capsys):
    assert main(["steplaw", "--params", "1e8", "--tokens", "2e9", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert abs(r["lr"] - 2.54e-3) < 1e-5 and abs(r["batch_tokens"] - 118.7e3) < 100


def test_sweep_train_command(tmp_path, capsys):
    from tests.jobs import test_train_sweep  # noqa: F401  (registers the tiny job)

    recipe = tmp_path / "r.yaml"
    recipe.write_text("job: scaling-test-tiny\nscale: 1.0\n")
    out = tmp_path / "sw"
    assert main(["sweep-train", str(recipe), "--sparsity", "0.5,0.9", "--seeds", "2", "--out", str(out)]) == 0
    assert "4 runs: 4 trained" in capsys.readouterr().out
    assert (
        main(
            [
                "fit",
                str(out / "runs.csv"),
                "--law",
                "power",
                "--x",
                "final.density",
                "--y",
                "final.test_loss",
                "--bootstrap",
                "0",
                "--no-plot",
                "--out",
                str(tmp_path / "f"),
            ]
        )
        == 0
    )
