"""Synthetic biographies with a known amount of knowledge (the bioS data of Allen-Zhu & Li 2024).

Paper: "Physics of Language Models: Part 3.3, Knowledge Capacity Scaling Laws" (Allen-Zhu & Li
2024, papers.txt), Sec. 2. bioS(N) has N people; each gets a distinct full name drawn uniformly
(first x middle x last: N0 = 400 x 400 x 1000 names) and six attributes drawn independently and
uniformly from fixed sets (birth date 12 x 28 x 200, birth city 200, university 300, major 100,
employer 263; the work city follows from the employer). Every person's biography is a few
templated sentences, each repeating the full name. Because the values are independent and
uniform, the data holds a known number of bits, which is what makes the capacity measurable.

Here the sets are smaller (a tiny model must be able to hold a good fraction of them), a name is
first x last, every value is ONE token of a small closed vocabulary (so an attribute's loss is the
cross-entropy at one position), and the sentence templates are fixed (the paper's bioS "single"
variant). :func:`generate_population` draws the people, :func:`render` writes every biography as
the same-length token sequence and records where each value token sits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sparsecraft.errors import SparsecraftError

#: default value-set sizes (the paper's sets scaled down so that ~100K-parameter models can hold them)
DEFAULT_SIZES: dict[str, int] = {"birth_month": 12, "birth_day": 28, "birth_year": 20, "birth_city": 20,
                                 "university": 30, "major": 16, "employer": 30}

#: the sentences after the full name; ``<attr>`` is the value slot. A sentence is used when all
#: its slots are attributes of the population; an attribute no sentence covers gets "has <attr> <value> ."
TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("was", "born", "on", "<birth_month>", "<birth_day>", ",", "<birth_year>", "."),
    ("was", "born", "in", "<birth_city>", "."),
    ("studied", "<major>", "at", "<university>", "."),
    ("worked", "for", "<employer>", "."),
)

BOS = "<bos>"


@dataclass
class Population:
    """N people: ``first``/``last`` name indices (distinct pairs) and one value index per attribute,
    ``values[attr]`` of shape (N,), drawn uniformly from ``range(sizes[attr])``."""

    first: np.ndarray
    last: np.ndarray
    values: dict[str, np.ndarray]
    sizes: dict[str, int]
    n_first: int
    n_last: int

    @property
    def n(self) -> int:
        return int(self.first.shape[0])

    @property
    def n_names(self) -> int:
        """N0: the number of possible full names."""
        return self.n_first * self.n_last


def check_sizes(sizes: dict[str, int]) -> dict[str, int]:
    """The attribute -> value-set size mapping, checked: at least one attribute, every size >= 1."""
    if not isinstance(sizes, dict) or not sizes:
        raise SparsecraftError(f"sizes must map at least one attribute name to its number of values, got {sizes!r}")
    for name, size in sizes.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise SparsecraftError(f"attribute names must be identifiers, got {name!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise SparsecraftError(f"attribute {name!r} needs a value set of at least 1 value, got {size!r} "
                                   "(an empty value set holds nothing to draw)")
    return dict(sizes)


def generate_population(n: int, sizes: dict[str, int] | None = None, n_first: int = 60, n_last: int = 60,
                        seed: int = 0) -> Population:
    """``n`` people with distinct (first, last) names drawn uniformly without replacement from the
    ``n_first x n_last`` grid and every attribute drawn independently and uniformly (bioS, Sec. 2)."""
    sizes = check_sizes(DEFAULT_SIZES if sizes is None else sizes)
    for name, v in (("n_first", n_first), ("n_last", n_last)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SparsecraftError(f"{name} must be an integer >= 1, got {v!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SparsecraftError(f"the population needs n >= 1 people, got {n!r}")
    if n > n_first * n_last:
        raise SparsecraftError(f"{n} people need {n} distinct names but only {n_first} x {n_last} = "
                               f"{n_first * n_last} exist; raise n_first / n_last")
    rng = np.random.default_rng(seed)
    names = rng.choice(n_first * n_last, size=n, replace=False)
    values = {a: rng.integers(0, s, size=n) for a, s in sizes.items()}
    return Population(names // n_last, names % n_last, values, sizes, n_first, n_last)


@dataclass
class Rendered:
    """Token ids of every biography, ``tokens`` (N, L), with ``positions[attr]`` (and ``"first"``,
    ``"last"`` for the name's first occurrence) = the column of that token in every row, and the
    vocabulary ``vocab`` (token string -> id)."""

    tokens: torch.Tensor
    positions: dict[str, int]
    vocab: dict[str, int]


def sentences(attributes: list[str]) -> list[tuple[str, ...]]:
    """The templates used for these attributes (see :data:`TEMPLATES`), in order."""
    used, covered = [], set()
    for t in TEMPLATES:
        slots = [w[1:-1] for w in t if w.startswith("<")]
        if all(s in attributes for s in slots):
            used.append(t)
            covered.update(slots)
    used += [("has", a, f"<{a}>", ".") for a in attributes if a not in covered]
    return used


def build_vocab(pop: Population) -> dict[str, int]:
    """The closed vocabulary: BOS, the template words, one token per first name, last name and
    attribute value (``first:3``, ``birth_city:17``)."""
    words: list[str] = [BOS]
    for t in sentences(list(pop.sizes)):
        words += [w for w in t if not w.startswith("<") and w not in words]
    words += [f"first:{i}" for i in range(pop.n_first)] + [f"last:{i}" for i in range(pop.n_last)]
    for a, s in pop.sizes.items():
        words += [f"{a}:{i}" for i in range(s)]
    return {w: i for i, w in enumerate(words)}


def render(pop: Population) -> Rendered:
    """Every biography as ``<bos> F L <sentence 1> F L <sentence 2> ...`` (same length for all)."""
    vocab = build_vocab(pop)
    columns: list[np.ndarray] = [np.full(pop.n, vocab[BOS])]
    positions: dict[str, int] = {}
    first_ids = np.array([vocab[f"first:{i}"] for i in range(pop.n_first)])[pop.first]
    last_ids = np.array([vocab[f"last:{i}"] for i in range(pop.n_last)])[pop.last]
    for t in sentences(list(pop.sizes)):
        positions.setdefault("first", len(columns))
        positions.setdefault("last", len(columns) + 1)
        columns += [first_ids, last_ids]
        for w in t:
            if w.startswith("<"):
                a = w[1:-1]
                positions[a] = len(columns)
                columns.append(np.array([vocab[f"{a}:{i}"] for i in range(pop.sizes[a])])[pop.values[a]])
            else:
                columns.append(np.full(pop.n, vocab[w]))
    return Rendered(torch.from_numpy(np.stack(columns, axis=1).astype(np.int64)), positions, vocab)
