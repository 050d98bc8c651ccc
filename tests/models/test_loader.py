"""``load_model`` reads safetensors weights only: a pickled checkpoint is refused, never unpickled."""

import pickle

import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.models.loader import load_model

pytest.importorskip("transformers")


class Payload:
    """Unpickling this creates the file it names: proof that a pickle was run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_folder_with_only_pytorch_model_bin_is_a_one_line_refusal(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(tmp_path / "ran")))
    with pytest.raises(SparsecraftError, match=r"no \.safetensors weights \(found \['pytorch_model.bin'\]\)") as info:
        load_model(d)
    assert "\n" not in str(info.value) and not (tmp_path / "ran").exists()
