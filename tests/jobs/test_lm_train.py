"""The ``lm-train`` job and ``sparsecraft train`` on it: report, plots, bit-exact --resume, errors."""

import json

import pytest
import torch
import yaml

from sparsecraft.cli.main import main
from sparsecraft.errors import RecipeError, SparsecraftError
from sparsecraft.jobs.recipe import load_recipe, run_recipe
from sparsecraft.moe import load_lm

TEXT = "".join(f"Line {i}: to be, or not to be, that is the question {i * 7 % 13}.\n" for i in range(400))


@pytest.fixture
def recipe(tmp_path):
    src = tmp_path / "text.txt"
    src.write_text(TEXT)
    return {"job": "lm-train", "data": {"source": str(src)}, "steps": 12, "batch_size": 4, "seq_len": 32,
            "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "ffn": "moe",
                      "moe": {"n_experts": 4, "expert_dim": 32, "top_k": 1, "aux_loss_coef": 0.01,
                              "bias_update_rate": 0.001},
                      "engram": {"layers": [1], "table_size": 97, "embed_dim": 16}},
            "top_k_schedule": {"layers": {"0": [[0, 2], [6, 1]], "default": 1}},
            "optimizer": {"warmup_steps": 2}, "eval": {"every": 6, "windows": 4},
            "checkpoint": {"every": 6}, "threads": 1, "progress": False}  # fmt: skip


def test_report_plots_model_and_schedule(recipe, tmp_path):
    run_dir, rep = run_recipe(recipe, tmp_path / "a")
    f = rep["final"]
    assert f["val_loss"] < 5.5 and f["val_ppl"] == pytest.approx(2.718281828 ** f["val_loss"])
    assert f["active_params"] < f["params"] and f["tokens_per_s"] > 0 and len(f["expert_load"]) == 2
    assert [c["step"] for c in rep["curves"]] == [6, 12]
    assert rep["curves"][0]["top_k"] == [2, 1] and rep["curves"][1]["top_k"] == [1, 1]
    assert set(rep["curves"][0]["load_cv"]) == {"layers.0.mlp", "layers.1.mlp"}
    for name in ("curves.png", "expert_load.png", "model.safetensors", "report.json", "checkpoint/state.safetensors"):
        assert (run_dir / name).is_file()
    model = load_lm(run_dir / "model.safetensors")
    assert model.layers[1].engram is not None and model.config.vocab_size == 256


def test_resume_continues_bit_for_bit(recipe, tmp_path):
    full_dir, full = run_recipe(dict(recipe), tmp_path / "full")
    part_dir, part = run_recipe({**recipe, "stop_after": 4}, tmp_path / "part")
    assert part["final"] is None and part["stopped_after_step"] == 4
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(p), "--out", str(part_dir), "--resume", "--json"]) == 0
    resumed = json.loads((part_dir / "report.json").read_text())
    a = load_lm(full_dir / "model.safetensors").state_dict()
    b = load_lm(part_dir / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [c["val_loss"] for c in resumed["curves"]] == [c["val_loss"] for c in full["curves"]]
    assert resumed["resumed_from_step"] == 4


def test_resume_refuses_changed_settings_and_missing_checkpoints(recipe, tmp_path):
    run_recipe({**recipe, "stop_after": 4}, tmp_path / "p")
    with pytest.raises(SparsecraftError, match="differs from the run saved .* seed"):
        run_recipe({**recipe, "seed": 3, "resume": True}, tmp_path / "p")
    with pytest.raises(SparsecraftError, match="no checkpoint"):
        run_recipe({**recipe, "resume": True}, tmp_path / "q")
    with pytest.raises(SparsecraftError, match="already holds a run"):
        run_recipe(dict(recipe), tmp_path / "p")


@pytest.mark.parametrize("change, word", [
    ({"model": {"d_modle": 4}}, "unknown model option"),
    ({"model": {"ffn": "moe", "moe": {"n_experts": 4, "expert_dim": 8, "top_k": 5}}}, "top_k must be an integer in"),
    ({"model": {"ffn": "moe", "moe": {"n_experts": 0, "expert_dim": 8}}}, "n_experts must be an integer >= 1"),
    ({"top_k_schedule": {"type": "linear", "initial": 1, "final": 0, "end": 12}}, "ends \\(step 12\\) at 0"),
    ({"model": {"engram": {"layers": [0], "table_size": 0}}}, "table_size must be an integer >= 1"),
    ({"seq_len": 64, "model": {"max_seq_len": 32}}, "max_seq_len=32 is shorter than seq_len=64"),
    ({"device": "tpu"}, "device must be cpu or cuda"),
    ({"model": {"vocab_size": 100}}, "vocab_size comes from the tokenizer"),
])
def test_bad_recipes_are_one_line_errors_before_anything_runs(recipe, change, word, tmp_path):
    doc = {**recipe, **change}
    if "model" in change and "engram" in change["model"]:
        doc["top_k_schedule"] = None
    with pytest.raises(RecipeError, match=word) as e:
        run_recipe(doc, tmp_path / "bad")
    assert "\n" not in str(e.value) and not (tmp_path / "bad").exists()


def test_builtin_recipe_validates():
    job, config = load_recipe("lm-moe")
    assert job.registry_name == "lm-train" and config.model["ffn"] == "moe"


def test_cli_prints_the_summary_and_refuses_other_jobs(recipe, tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({**recipe, "steps": 4}))
    assert main(["train", str(p), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "validation loss" in out and "layers.0.mlp: load CV" in out
    q = tmp_path / "s.yaml"
    q.write_text(yaml.safe_dump({"job": "digits-sweep"}))
    assert main(["train", str(q)]) == 2
    assert "'job: lm-train'" in capsys.readouterr().err
