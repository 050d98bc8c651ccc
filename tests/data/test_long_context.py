"""Long-context task generators on a small text file with a character tokenizer (no download)."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.data.long_context import Haystack, Sample, make_sample, make_tasks, score
from sparsecraft.errors import SparsecraftError


class CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@pytest.fixture(scope="module")
def hay(tmp_path_factory):
    path = tmp_path_factory.mktemp("txt") / "play.txt"
    path.write_text("\n".join(f"Line {i} of a play, spoken softly." for i in range(3000)))
    return Haystack(CharTokenizer(), source=str(path))


def test_needle_sample_is_exact_length_with_the_line_at_its_depth(hay):
    s = make_sample("needle", hay, 3000, depth=0.25, seed=1)
    text = CharTokenizer().decode(s.ids.tolist())
    assert s.ids.numel() == 3000
    key, value = s.meta["key"], s.answers[0]
    line = f"The magic number for {key} is {value}."
    assert text.count(line) == 1 and len(value) == 5
    body = len(text) - len(text.split("\nWhat is")[-1])
    assert abs(text.index(line) / body - 0.25) < 0.05
    assert text.endswith(f"What is the magic number for {key}? The magic number for {key} is")


def test_multikey_has_distractors_and_asks_one(hay):
    s = make_sample("multikey", hay, 3000, depth=0.5, seed=2)
    text = CharTokenizer().decode(s.ids.tolist())
    assert text.count("The magic number for ") == 4 + 1  # four planted lines + the question's echo
    assert f"The magic number for {s.meta['key']} is {s.answers[0]}." in text


def test_vartrack_chain_in_order(hay):
    s = make_sample("vartrack", hay, 3000, depth=0.2, seed=3, hops=3)
    text = CharTokenizer().decode(s.ids.tolist())
    names = s.meta["names"]
    value = text.split(f"VAR {names[0]} = ")[1][:5]
    positions = [text.index(f"VAR {names[0]} = {value}.")] + [text.index(f"VAR {b} = VAR {a}.")
                                                              for a, b in zip(names, names[1:])]
    assert positions == sorted(positions) and s.answers == [" ".join(names)]
    assert text.endswith(f"Variables with the value {value}:")


def test_score_by_hand():
    needle = Sample("needle", torch.zeros(1), ["12345"], 0.5)
    assert score(needle, " 12345.\n") == 1.0
    assert score(needle, " 12346.") == 0.0
    assert score(needle, "") == 0.0
    vt = Sample("vartrack", torch.zeros(1), ["AAA BBB"], 0.5, {"names": ["AAA", "BBB"]})
    assert score(vt, " AAA BBB\nmore") == 1.0 and score(vt, " AAA, BBB") == 1.0 and score(vt, " BBB AAA") == 0.0


def test_make_tasks_is_reproducible_and_checks_input(hay):
    a = make_tasks(CharTokenizer(), ["needle", "vartrack"], 2000, [0.1, 0.9], 2, seed=4, haystack=hay)
    b = make_tasks(CharTokenizer(), ["needle", "vartrack"], 2000, [0.1, 0.9], 2, seed=4, haystack=hay)
    assert len(a) == 8 and all(torch.equal(x.ids, y.ids) for x, y in zip(a, b))
    assert len({x.answers[0] for x in a}) > 1
    with pytest.raises(SparsecraftError, match="unknown long-context task 'qa'"):
        make_sample("qa", hay, 1000, 0.5, 0)
    with pytest.raises(SparsecraftError, match=r"depth must be in \[0, 1\], got 1.5"):
        make_sample("needle", hay, 1000, 1.5, 0)
    with pytest.raises(SparsecraftError, match="too short"):
        make_sample("needle", hay, 50, 0.5, 0)
