"""Read recipe files strictly: ``yaml.safe_load`` semantics, minus what it lets through.

``yaml.safe_load`` builds only plain data (no tag constructs a Python object), but it
silently keeps the *last* of two equal keys, recurses once per nesting level (a few thousand
``[`` raise ``RecursionError``), follows aliases into cycles (``&a [*a]``) and expands
"billion laughs" alias trees when the data is later walked. :func:`load_yaml` keeps the
safe loader and refuses all of these with one line naming the file, the line and the rule:

* a document larger than :data:`MAX_BYTES`, or bytes that are not UTF-8;
* a key repeated in one mapping (merge keys ``<<`` may still be overridden, as YAML intends);
* nesting deeper than :data:`MAX_DEPTH` levels;
* an alias that contains itself, or a document that expands (aliases followed) to more than
  :data:`MAX_NODES` values.

:func:`check_plain_data` applies the same depth / size / cycle bounds to a dict built in
Python (``run_recipe({...})``), so both roads into a job meet the same limits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from sparsecraft.errors import RecipeError

MAX_BYTES = 1 << 20  #: a recipe is a few hundred bytes; 1 MiB leaves room for long lists
MAX_DEPTH = 64  #: nesting levels; real recipes use fewer than 6
MAX_NODES = 200_000  #: values after following aliases


class _Refused(Exception):
    """Internal: a bound was exceeded while walking a node graph."""


class LimitError(yaml.composer.ComposerError):
    """A document that parses but exceeds a bound of this module (depth, size, cycles)."""


def _walk(root: Any, children: Callable[[Any], Iterable[Any]]) -> None:
    """Iterative walk over a graph that may share nodes: refuse cycles, nesting deeper than
    MAX_DEPTH and more than MAX_NODES values once shared nodes are counted every time."""
    size: dict[int, int] = {}
    open_ids: set[int] = set()
    stack: list[tuple[Any, bool, int]] = [(root, False, 1)]
    while stack:
        node, closing, depth = stack.pop()
        key = id(node)
        if closing:
            open_ids.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children(node))
            if size[key] > MAX_NODES:
                raise _Refused(f"it expands to more than {MAX_NODES} values (aliases followed)")
            continue
        if key in size:
            continue
        if key in open_ids:
            raise _Refused("a value contains itself (recursive alias or reference)")
        if depth > MAX_DEPTH:
            raise _Refused(f"nesting is deeper than {MAX_DEPTH} levels")
        open_ids.add(key)
        stack.append((node, True, depth))
        stack.extend((c, False, depth + 1) for c in children(node) if id(c) not in size)


def _node_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _data_children(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    return []


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, deep nesting and alias bombs."""

    _depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 -- PyYAML's signature
        if self._depth >= MAX_DEPTH:  # bound the composer's recursion before Python's limit
            raise LimitError(
                None, None, f"nesting is deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):  # noqa: ANN201
        node = super().get_single_node()
        if node is not None:
            try:
                _walk(node, _node_children)
            except _Refused as e:
                raise LimitError(None, None, str(e), node.start_mark) from None
        return node

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first.line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def _one_line(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        what = " ".join(x for x in (e.context, e.problem) if x)
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return " ".join(f"{where}{what}".split())
    return " ".join(str(e).split())


def load_yaml(data: bytes, source: str | Path) -> Any:
    """Parse recipe bytes (UTF-8, optional BOM) with :class:`StrictSafeLoader`; one-line
    :class:`RecipeError` naming ``source`` on any refusal."""
    if len(data) > MAX_BYTES:
        raise RecipeError(f"{source} is too large for a recipe (more than {MAX_BYTES} bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RecipeError(
            f"{source} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 -- a SafeLoader subclass
    except LimitError as e:
        raise RecipeError(f"{source} is refused: {_one_line(e)}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{source} is not valid YAML: {_one_line(e)}") from None


def check_plain_data(obj: Any, source: str = "recipe") -> None:
    """Refuse a Python recipe dict that is cyclic, deeper than MAX_DEPTH or larger than
    MAX_NODES values (the limits :func:`load_yaml` applies to files)."""
    try:
        _walk(obj, _data_children)
    except _Refused as e:
        raise RecipeError(f"{source}: {e}") from None
