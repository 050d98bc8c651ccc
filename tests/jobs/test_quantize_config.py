"""Recipe keys of quantized prune runs: validated with one-line errors naming the key path."""

from __future__ import annotations

import pytest

from sparsecraft.errors import RecipeError
from sparsecraft.jobs.recipe import load_recipe


def _recipe(run: dict, **top) -> dict:
    return {"job": "prune-llm", "runs": [run], **top}


def test_valid_quantized_runs_and_labels():
    _, cfg = load_recipe(_recipe({"method": "sparsegpt", "sparsity": 0.5, "quantize": {"bits": 4, "group": 64}},
                                 tune={"steps": 10, "loss": "squarehead"}))
    r = cfg.runs[0]
    assert r.quantize.as_option() == {"bits": 4, "group": 64, "sym": True, "embedding": None}
    assert r.label() == "sparsegpt W4 50%" and cfg.tune.steps == 10
    _, cfg = load_recipe(_recipe({"method": "gqsa", "sparsity": 0.5, "pattern": "block:1x16",
                                  "quantize": {"bits": 4, "embedding": 8}}))
    assert cfg.runs[0].label() == "gqsa W4 E8 50%"


@pytest.mark.parametrize("run,top,msg", [
    ({"method": "sparsegpt", "quantize": {"bits": 3}}, {}, "runs.0.quantize"),
    ({"method": "sparsegpt", "quantize": {"group": 20}}, {}, "multiple of 16"),
    ({"method": "sparsegpt", "quantize": {"bits": 4, "colour": 1}}, {}, "colour"),
    ({"criterion": "wanda", "quantize": {"bits": 4}}, {}, "quantize needs a one-shot method"),
    ({"method": "gptq", "quantize": {"bits": 4}}, {"tune": {"loss": "mse"}}, "unknown tune loss"),
    ({"method": "gptq", "quantize": {"bits": 4}}, {"tune": {"steps": -1}}, "tune.steps"),
])
def test_invalid_keys(run, top, msg):
    with pytest.raises(RecipeError, match=msg):
        load_recipe(_recipe(run, **top))
