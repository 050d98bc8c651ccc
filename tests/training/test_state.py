"""Training checkpoints are one verified pair: a crash, a flipped byte or a model file from
another save is refused (or undone), never resumed silently."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparsecraft import atomic
from sparsecraft.errors import CheckpointError
from sparsecraft.methods import attach
from sparsecraft.training import state
from sparsecraft.training.state import MODEL_FILE, STATE_FILE, load_training_state, save_training_state
from tests.core.helpers import small_mlp


def _trained(seed: int, steps: int = 3):
    """A RigL run of a few steps on random data: (model, optimizer, method)."""
    model = small_mlp(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = attach(model, opt, method="rigl", sparsity=0.5, total_steps=20, update={"every": 2}, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt, method


def _fresh():
    model = small_mlp(99)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt, attach(model, opt, method="rigl", sparsity=0.5, total_steps=20, update={"every": 2})


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_restores_model_method_and_extra(tmp_path):
    model, opt, method = _trained(1)
    save_training_state(tmp_path / "ck", model, opt, method, {"epoch": 1234})
    m2, o2, meth2 = _fresh()
    assert load_training_state(tmp_path / "ck", m2, o2, meth2) == {"epoch": 1234}
    assert _same(_weights(model), _weights(m2)) and meth2.step_count == method.step_count == 3


def test_flipped_byte_in_a_state_tensor_is_refused(tmp_path):
    model, opt, method = _trained(1)
    save_training_state(tmp_path / "ck", model, opt, method, {"epoch": 1})
    path = tmp_path / "ck" / STATE_FILE
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10  # the last bytes are tensor data (the header comes first)
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"state\.safetensors: tensor '.*' is corrupted"):
        load_training_state(tmp_path / "ck", *_fresh())


def test_flipped_byte_in_the_metadata_is_refused(tmp_path):
    model, opt, method = _trained(1)
    save_training_state(tmp_path / "ck", model, opt, method, {"epoch": 1234})
    path = tmp_path / "ck" / STATE_FILE
    raw = path.read_bytes()
    assert raw.count(b"1234") == 1
    path.write_bytes(raw.replace(b"1234", b"1235"))  # still valid JSON, a different epoch
    with pytest.raises(CheckpointError, match="metadata is corrupted"):
        load_training_state(tmp_path / "ck", *_fresh())


def test_model_file_from_another_save_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save_training_state(a, *_trained(1), {"epoch": 1})
    save_training_state(b, *_trained(2, steps=5), {"epoch": 2})
    shutil.copy(b / MODEL_FILE, a / MODEL_FILE)  # what a crash between the two writes used to leave
    with pytest.raises(CheckpointError, match="not the model file saved with .*mismatched pair"):
        load_training_state(a, *_fresh())


def test_a_save_that_dies_between_the_two_files_keeps_the_previous_pair(tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    first = _trained(1)
    save_training_state(ck, *first, {"epoch": 1})
    second = _trained(2, steps=5)

    real = state.atomic.write_safetensors

    def disk_full(path, *args, **kwargs):
        if Path(path).name == STATE_FILE:  # the model file is already written
            raise OSError("disk full")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(state.atomic, "write_safetensors", disk_full)
    with pytest.raises(OSError, match="disk full"):
        save_training_state(ck, *second, {"epoch": 2})
    monkeypatch.undo()
    m2, o2, meth2 = _fresh()
    assert load_training_state(ck, m2, o2, meth2) == {"epoch": 1}
    assert _same(_weights(m2), _weights(first[0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folder left


def test_a_crash_inside_the_folder_swap_is_undone_on_read(tmp_path):
    ck = tmp_path / "ck"
    save_training_state(ck, *_trained(1), {"epoch": 1})
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    aside = atomic.temp_sibling(ck, aside=True, pid=dead)  # where atomic.directory moves the old folder first
    ck.rename(aside)  # the process died before the new folder was renamed in
    assert load_training_state(ck, *_fresh()) == {"epoch": 1}
    assert ck.is_dir() and not aside.exists()


def test_a_pair_without_its_verification_record_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    ck = tmp_path / "ck"
    save_training_state(ck, *_trained(1), {"epoch": 1})
    # rewrite the state as the previous sparsecraft did: same tensors, no CRCs, no model-file record
    from safetensors import safe_open

    with safe_open(str(ck / STATE_FILE), framework="pt") as f:
        doc = f.metadata()["sparsecraft_training"]
    save_file(load_file(str(ck / STATE_FILE)), str(ck / STATE_FILE), {"sparsecraft_training": doc})
    with pytest.raises(CheckpointError, match="older sparsecraft .* cannot be verified"):
        load_training_state(ck, *_fresh())


def test_missing_state_and_garbage_state_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume from"):
        load_training_state(tmp_path / "none", *_fresh())
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / STATE_FILE).write_bytes(b"\x00" * 40)
    with pytest.raises(CheckpointError, match="not a readable sparsecraft training state") as e:
        load_training_state(ck, *_fresh())
    assert "\n" not in str(e.value)
