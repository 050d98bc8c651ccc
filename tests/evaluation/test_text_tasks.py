"""Tasks generated from text: built from the held-out pool only, deterministic, well formed."""

import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.evaluation.text_tasks import build_docs, cloze_docs, evaluation_text, nextline_docs, speeches

PLAY = """THE TRAGEDY OF NOBODY

[Enter two.]

ALPHA.
one two three four
five six seven eight nine
ten eleven twelve.

BETA.
red green blue,
cyan magenta yellow black
white grey silver gold.

[Exit.]

GAMMA.
up down left right
in out over under
near far high low soon.

DELTA.
north south east west
spring summer autumn winter
a b c d e.
"""


def test_speeches_skip_titles_and_stage_directions():
    items = speeches(PLAY)
    assert [s.speaker for s in items] == ["ALPHA.", "BETA.", "GAMMA.", "DELTA."]
    assert items[1].lines == ["red green blue,", "cyan magenta yellow black", "white grey silver gold."]


def test_nextline_gold_is_the_true_next_line_and_distractors_come_from_other_speeches():
    items = speeches(PLAY)
    docs = nextline_docs(items, n=50, seed=3)
    assert docs
    for d in docs:
        speaker, *context = d["query"].rstrip("\n").split("\n")
        sp = next(s for s in items if s.speaker == speaker)
        k = len(context)
        assert sp.lines[:k] == context and d["choices"][d["gold"]] == sp.lines[k]
        words = len(sp.lines[k].split())
        for i, c in enumerate(d["choices"]):
            if i != d["gold"]:
                assert c not in sp.lines and abs(len(c.split()) - words) <= 2
    assert nextline_docs(items, n=50, seed=3) == docs  # deterministic
    assert nextline_docs(items, n=50, seed=4) != docs


def test_cloze_removes_the_last_word_and_its_punctuation():
    docs = cloze_docs(speeches(PLAY), n=10)
    by_target = {d["target"]: d["context"] for d in docs}
    assert by_target[" twelve"] == "ALPHA.\none two three four\nfive six seven eight nine\nten eleven"
    assert by_target[" gold"].endswith("white grey silver")
    assert " e" not in by_target  # a 1-letter word is not a cloze target


def test_evaluation_text_is_the_last_tenth_of_the_tokens(tmp_path):
    class CharTokenizer:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    f = tmp_path / "play.txt"
    f.write_text(PLAY * 10)
    text = (PLAY * 10)
    assert evaluation_text(CharTokenizer(), f) == text[len(text) * 9 // 10:]


def test_text_without_speeches_is_an_error():
    with pytest.raises(SparsecraftError, match="no material for the nextline task"):
        build_docs("just prose\nwith no speakers\n\nat all", n=5)
