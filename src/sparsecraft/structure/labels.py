"""Channel spaces and the labels the tracer puts on tensor dimensions.

A *channel space* is a set of parameter slices that share one channel index: row ``c`` of an
``nn.Linear`` weight and entry ``c`` of its bias are the producer side of space ``S``; column
``c`` of the next layer's weight is the consumer side of the same space. Removing channel ``c``
of ``S`` means removing that index from every :class:`Slot` of ``S`` at once.

Spaces are merged when the trace shows that their channels are added, multiplied or
normalised together (a residual add, the gate x up product of a gated MLP, a BatchNorm);
a merge is the union step of a union-find (:class:`Spaces`). A space is *frozen* -- its
channels cannot be removed -- when something mixes its channels in a way the removal cannot
follow (a LayerNorm / RMSNorm normalising over them, a matmul outside a leaf module, an
unknown op, the model's output), with the reason kept for the error message.

The tracer labels every dimension of every tensor it sees with where its index comes from:

* :class:`Ch` -- channels ``off .. off + n`` of a space, each repeated ``spread`` times along the
  dimension (``spread > 1`` after a channel-major flatten of ``C x H x W`` feature maps);
* :class:`Heads` / :class:`Within` -- the two dimensions a ``view`` splits a channel dimension
  into (heads x head_dim); ``Heads.repeat`` counts how often each head is repeated (grouped-query
  attention's ``repeat_kv``);
* :class:`SiteHeads` / :class:`SiteWithin` / :class:`SiteOut` -- the output of an attention op:
  per query head, per value channel, and the two merged back into one dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Slot:
    """One parameter (or buffer) dimension indexed by a space's channels.

    ``role`` is ``"out"`` for the producer side (weight rows, biases), ``"in"`` for the consumer
    side (weight columns), ``"through"`` for per-channel modules between them (BatchNorm, norms,
    free parameters used element-wise)."""

    module: str
    name: str  # parameter or buffer name on the module ("weight", "bias", "running_mean")
    dim: int
    role: str
    spread: int = 1

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}" if self.module else self.name


@dataclass(frozen=True)
class Ch:
    space: int
    off: int
    n: int
    spread: int = 1


@dataclass(frozen=True)
class Heads:
    space: int
    off: int
    inner: int
    repeat: int = 1


@dataclass(frozen=True)
class Within:
    space: int
    off: int
    inner: int
    whole: bool = True


@dataclass(frozen=True)
class SiteHeads:
    site: int


@dataclass(frozen=True)
class SiteWithin:
    site: int


@dataclass(frozen=True)
class SiteOut:
    site: int


Label = Ch | Heads | Within | SiteHeads | SiteWithin | SiteOut | None


def label_spaces(label: Label) -> list[int]:
    """The spaces a label refers to directly."""
    return [label.space] if isinstance(label, (Ch, Heads, Within)) else []


@dataclass
class Spaces:
    """Union-find over channel spaces, with their slots, sizes and freeze reasons."""

    parent: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    slots: dict[int, list[Slot]] = field(default_factory=dict)
    frozen: dict[int, str] = field(default_factory=dict)
    heads: set[int] = field(default_factory=set)  #: spaces read head by head by an attention op
    sites: dict[int, set[int]] = field(default_factory=dict)  #: space -> attention sites using it

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.slots[len(self.parent) - 1] = []
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def add_slot(self, a: int, slot: Slot) -> None:
        root = self.find(a)
        if slot not in self.slots[root]:
            self.slots[root].append(slot)

    def freeze(self, a: int, reason: str) -> None:
        root = self.find(a)
        self.frozen.setdefault(root, reason)

    def union(self, a: int, b: int) -> int:
        """Merge two spaces of equal size (channel ``c`` of one is channel ``c`` of the other)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            reason = f"{self.size[ra]} channels meet {self.size[rb]} channels of another tensor"
            self.freeze(ra, reason)
            self.freeze(rb, reason)
            return ra
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.slots[ra].extend(s for s in self.slots.pop(rb) if s not in self.slots[ra])
        if rb in self.frozen:
            self.frozen.setdefault(ra, self.frozen.pop(rb))
        if rb in self.heads:
            self.heads.discard(rb)
            self.heads.add(ra)
        if rb in self.sites:
            self.sites.setdefault(ra, set()).update(self.sites.pop(rb))
        return ra

    def roots(self) -> list[int]:
        return [a for a in range(len(self.parent)) if self.parent[a] == a]

    def is_frozen(self, a: int) -> bool:
        return self.find(a) in self.frozen

    def reason(self, a: int) -> str | None:
        return self.frozen.get(self.find(a))
