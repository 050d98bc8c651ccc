"""Recipe YAML is read with safe_load semantics and refuses what safe_load lets through or
crashes on: duplicate keys, deep nesting, recursive aliases, alias bombs, non-UTF-8 bytes."""

from __future__ import annotations

import pytest

from sparsecraft.errors import RecipeError
from sparsecraft.jobs.strict_yaml import MAX_BYTES, MAX_DEPTH, check_plain_data, load_yaml


def _refused(data: bytes, match: str) -> str:
    with pytest.raises(RecipeError, match=match) as e:
        load_yaml(data, "r.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("r.yaml")
    return msg


def test_plain_recipe_and_merge_keys_still_load():
    doc = load_yaml(b"\xef\xbb\xbfbase: &b {x: 1, y: [2, 3]}\nc:\n  <<: *b\n  x: 5\n", "r.yaml")
    assert doc == {"base": {"x": 1, "y": [2, 3]}, "c": {"x": 5, "y": [2, 3]}}  # BOM skipped, merge overridable


@pytest.mark.parametrize(
    "text, line",
    [(b"job: train\nepochs: 2\nepochs: 3\n", 3), (b"job: train\noptimizer: {lr: 0.1, lr: 0.2}\n", 2)],
)
def test_duplicate_keys_are_refused_naming_the_line(text, line):
    msg = _refused(text, "duplicate key")
    assert f"line {line}," in msg


def test_deep_nesting_is_bounded_not_a_recursion_error():
    _refused(b"x: " + b"[" * 5000 + b"]" * 5000, f"deeper than {MAX_DEPTH} levels")
    block = "".join("  " * i + "a:\n" for i in range(MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "b: 1\n"
    _refused(block.encode(), "deeper than")


def test_recursive_alias_and_alias_bomb_are_refused():
    _refused(b"x: &a [*a]\n", "contains itself")
    _refused(b"x: &a {<<: *a}\n", "contains itself")
    bomb = b"a: &a [1,1,1,1,1,1,1,1,1,1]\n" + b"".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n".encode() for p, c in zip("abcde", "bcdef")
    )
    _refused(bomb, "expands to more than")


def test_non_utf8_bytes_name_the_file_and_offset():
    _refused(b"job: train\n# caf\xe9\n", r"not UTF-8 text \(byte 0xe9 at offset 16\)")


def test_object_tags_stay_refused_and_size_is_bounded():
    _refused(b"x: !!python/object/apply:os.system [ls]\n", "could not determine a constructor")
    _refused(b"#" * (MAX_BYTES + 1), "too large")


def test_python_built_recipes_meet_the_same_bounds():
    cyclic: dict = {"job": "train"}
    cyclic["data"] = cyclic
    with pytest.raises(RecipeError, match="contains itself"):
        check_plain_data(cyclic)
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(RecipeError, match="deeper than"):
        check_plain_data({"job": "train", "sparsity": deep})
    check_plain_data({"job": "train", "method": {"name": "rigl", "update": {"every": 5}}})
