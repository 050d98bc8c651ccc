"""Hostile and careless checkpoint metadata: every edit is a one-line CheckpointError, never a
traceback, never a wrong tensor, and never a large allocation before the error."""

import json
import tracemalloc

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import sparsecraft
from sparsecraft.cli.main import main
from sparsecraft.errors import CheckpointError
from sparsecraft.formats.checkpoint import read_checkpoint, save
from tests.core.helpers import small_mlp


def masked_mlp(format="dense"):
    model = small_mlp(0)
    sparsecraft.prune(model, 0.5)
    return model


def rewrite(path, edit, sealed=False):
    """Re-write ``path`` with its metadata document edited by ``edit(doc) -> doc``; without
    ``sealed`` the document's own CRC is dropped first, as in a file written before it existed."""
    with safe_open(str(path), "pt") as f:
        doc = json.loads(f.metadata()["sparsecraft"])
    if not sealed:
        doc.pop("doc_crc32", None)
    save_file(load_file(path), path, metadata={"sparsecraft": json.dumps(edit(doc))})
    return path


def setting(key, value):
    def edit(doc):
        *outer, last = key
        d = doc
        for k in outer:
            d = d[k]
        d[last] = value
        return doc

    return edit


HOSTILE = {
    "document is a list": (lambda doc: [doc], "document is"),
    "document is a string": (lambda doc: "v2", "document is"),
    "version is a string": (setting(["format_version"], "2"), "format_version"),
    "version is a bool": (setting(["format_version"], True), "format_version"),
    "version from the future": (setting(["format_version"], 99), "reads <= 2"),
    "masks is a list": (setting(["masks"], []), "field 'masks'"),
    "mask shape is text": (setting(["masks", "0.weight_mask", "shape"], "32x16"), "shape"),
    "mask step is a float": (setting(["masks", "0.weight_mask", "step"], 1.5), "step"),
    "crc entry is text": (setting(["tensors", "0.bias", "crc32"], "0"), "crc32"),
    "alias is a number": (setting(["aliases"], {"x": 5}), "aliases"),
    "extra is a list": (setting(["extra"], []), "extra"),
    "negative size": (setting(["sizes", "dense_bytes"], -1), "dense_bytes"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_malformed_documents_are_one_line_errors(tmp_path, name):
    edit, words = HOSTILE[name]
    path = rewrite(save(masked_mlp(), tmp_path / "m.safetensors"), edit)
    with pytest.raises(CheckpointError, match=words) as info:
        sparsecraft.load(small_mlp(1), path)
    assert "\n" not in str(info.value)


PACKED_HOSTILE = {
    "unknown format": (setting(["packed", "0.weight", "format"], "zip"), "format"),
    "part dtype object": (setting(["packed", "0.weight", "parts", "values", 0], "object"), "parts"),
    "params are text": (setting(["packed", "0.weight", "params"], {"n": "2"}), "params"),
    "unknown layout": (setting(["packed", "0.weight", "layout"], "diagonal"), "layout"),
}


@pytest.mark.parametrize("name", PACKED_HOSTILE)
def test_malformed_packed_headers_are_one_line_errors(tmp_path, name):
    edit, words = PACKED_HOSTILE[name]
    model = small_mlp(0)
    sparsecraft.prune(model, 0.5, pattern="2:4")
    path = rewrite(save(model, tmp_path / "m.safetensors", format="nm"), edit)
    with pytest.raises(CheckpointError, match=words):
        read_checkpoint(path)


def test_cli_inspect_of_a_list_document_is_one_line(tmp_path, capsys):
    path = rewrite(save(masked_mlp(), tmp_path / "m.safetensors"), lambda doc: [doc])
    capsys.readouterr()  # only what the command writes
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def test_an_entry_missing_from_the_crc_table_is_an_error_not_a_pass(tmp_path):
    def drop(doc):
        del doc["tensors"]["2.weight"]
        return doc

    path = rewrite(save(masked_mlp(), tmp_path / "m.safetensors"), drop)
    with pytest.raises(CheckpointError, match=r"'2\.weight' has no CRC32"):
        read_checkpoint(path)


def test_an_edited_document_is_refused_by_its_own_crc(tmp_path):
    path = rewrite(save(masked_mlp(), tmp_path / "m.safetensors"), setting(["extra"], {"epoch": 3}), sealed=True)
    with pytest.raises(CheckpointError, match="metadata was changed after it was written"):
        read_checkpoint(path)


def tied_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    model[2].weight = model[0].weight
    return model


def test_a_redirected_alias_is_refused(tmp_path):
    model = tied_model()
    path = save(model, tmp_path / "m.safetensors", format="auto")
    _, doc = read_checkpoint(path)
    assert doc["aliases"] == {"2.weight": "0.weight"}
    rewrite(path, setting(["aliases", "2.weight"], "1.weight"), sealed=True)
    fresh = tied_model()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match="changed after it was written"):
        sparsecraft.load(fresh, path)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_an_alias_to_an_alias_or_to_nothing_is_refused(tmp_path):
    path = save(tied_model(), tmp_path / "m.safetensors", format="auto")
    rewrite(path, setting(["aliases", "2.weight"], "9.weight"))
    with pytest.raises(CheckpointError, match=r"tied tensor '2\.weight' -> '9\.weight'"):
        read_checkpoint(path)


def test_a_mask_shape_edited_smaller_is_refused_by_load_and_decompress(tmp_path, capsys):
    smaller = setting(["masks", "0.weight_mask", "shape"], [16, 16])
    path = rewrite(save(masked_mlp(), tmp_path / "m.safetensors"), smaller)
    with pytest.raises(CheckpointError, match=r"mask '0\.weight_mask' declares shape \[16, 16\]"):
        sparsecraft.load(small_mlp(1), path)
    assert main(["decompress", str(path), str(tmp_path / "d.safetensors")]) == 2
    assert "0.weight_mask" in capsys.readouterr().err and not (tmp_path / "d.safetensors").exists()


def test_a_mask_shape_with_the_same_byte_count_is_refused(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8))
    sparsecraft.prune(model, 0.5)
    path = rewrite(save(model, tmp_path / "m.safetensors"), setting(["masks", "0.weight_mask", "shape"], [2, 32]))
    with pytest.raises(CheckpointError, match=r"mask '0\.weight_mask' has shape \[2, 32\] but its weight is \[8, 8\]"):
        read_checkpoint(path)


def test_a_derived_mask_cannot_be_redirected(tmp_path):
    model = small_mlp(0)
    sparsecraft.prune(model, 0.5)
    path = save(model, tmp_path / "m.safetensors", format="auto")
    assert read_checkpoint(path)[1]["masks"]["0.weight_mask"]["from_nonzero"] == "0.weight"
    rewrite(path, setting(["masks", "0.weight_mask", "from_nonzero"], "2.weight"))
    with pytest.raises(CheckpointError, match="derives from '2.weight'"):
        read_checkpoint(path)


def _bomb_mask(doc):
    doc["masks"]["0.weight_mask"]["shape"] = [8000, 8000]
    return doc


def _bomb_packed(doc):
    header = doc["packed"]["0.weight"]
    old = header["shape"][0] * header["shape"][1] * 4
    header["shape"] = [8000, 8000]
    doc["sizes"]["dense_bytes"] += 8000 * 8000 * 4 - old  # consistent sizes: only the parts can tell
    return doc


@pytest.mark.parametrize("edit,fmt", [(_bomb_mask, "dense"), (_bomb_packed, "bitmap")])
def test_a_huge_declared_shape_fails_before_allocating_it(tmp_path, edit, fmt):
    path = rewrite(save(masked_mlp(), tmp_path / "m.safetensors", format=fmt), edit)
    assert path.stat().st_size < 20_000
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="0.weight"):
            read_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000  # the bomb asks for 64 MB (mask) / 256 MB (values)


def test_a_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(pickle.dumps(Payload(), protocol=4))
    with pytest.raises(CheckpointError, match="is a Python pickle"):
        sparsecraft.load(small_mlp(), path)
    assert not marker.exists()


def test_a_folder_instead_of_a_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)


def test_a_consistent_but_huge_sparse_tensor_beyond_memory_is_refused(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(64, 64))
    sparsecraft.prune(model, 0.99)
    path = save(model, tmp_path / "m.safetensors", format="csr")
    monkeypatch.setattr("sparsecraft.formats.checkpoint_doc.physical_memory", lambda: 10_000)
    with pytest.raises(CheckpointError, match="more than this machine's"):
        read_checkpoint(path)
