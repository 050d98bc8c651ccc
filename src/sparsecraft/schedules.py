"""Schedules: step -> value (a target sparsity, a drop fraction, ...), and when to update.

* ``constant``: ``value`` at every step.
* ``one_shot``: 0 before ``start``, ``value`` from ``start`` on.
* ``linear``: ``initial`` -> ``final`` between ``start`` and ``end``.
* ``polynomial``: Zhu & Gupta GMP, s_t = s_f + (s_i - s_f) * (1 - p)^power with
  p = clip((t - t0)/(t1 - t0), 0, 1); power 3 (cubic) by default.
* ``cosine``: (initial - final) * (1 + cos(pi p))/2 + final, e.g. RigL's drop fraction
  f(t) = (alpha/2)(1 + cos(pi min(t, T)/T)) is cosine(initial=alpha, final=0, end=T).
* ``exponential``: initial * (final/initial)^p (geometric interpolation; final 0 ->
  initial * exp(-rate * (t - start)) with ``rate``).

Spec forms accepted by :func:`make_schedule` (recipes use the same):
a number (constant), a dict ``{"type": "polynomial", "final": 0.9, "start": 0, "end": 1000}``,
or a list whose items are dicts (segments, each applying from its ``start``) or
``[step, value]`` pairs (piecewise constant from each step on).

:class:`UpdateRule` says on which steps a method updates its masks: every ``every`` steps from
``start`` until ``stop`` (exclusive; ``None`` = never stops).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sparsecraft.errors import SparsecraftError
from sparsecraft.registry import Registry

SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


class Schedule:
    """Base class: ``value(step)``; ``__call__`` is the same."""

    def value(self, step: int) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        return self.value(step)

    @property
    def start_step(self) -> int:
        return int(getattr(self, "start", 0))


class _Ramp(Schedule):
    """A ramp from ``initial`` at ``start`` to ``final`` at ``end`` with shape ``shape(p)``."""

    def __init__(self, final: float, initial: float = 0.0, start: int = 0, end: int = 1) -> None:
        if end < start:
            raise SparsecraftError(f"schedule end ({end}) must not be before start ({start})")
        self.initial, self.final, self.start, self.end = float(initial), float(final), int(start), int(end)

    def progress(self, step: int) -> float:
        if step <= self.start:
            return 0.0
        if step >= self.end:
            return 1.0
        return (step - self.start) / (self.end - self.start)

    def shape(self, p: float) -> float:
        raise NotImplementedError

    def value(self, step: int) -> float:
        return self.initial + (self.final - self.initial) * self.shape(self.progress(step))


@SCHEDULES.register("constant")
class Constant(Schedule):
    """The same value at every step."""

    def __init__(self, value: float, start: int = 0) -> None:
        self.value_ = float(value)
        self.start = int(start)

    def value(self, step: int) -> float:
        return self.value_


@SCHEDULES.register("one_shot")
class OneShot(Schedule):
    """0 before ``start``, ``value`` from ``start`` on."""

    def __init__(self, value: float, start: int = 0) -> None:
        self.value_, self.start = float(value), int(start)

    def value(self, step: int) -> float:
        return self.value_ if step >= self.start else 0.0


@SCHEDULES.register("linear")
class Linear(_Ramp):
    """Straight line from ``initial`` to ``final`` between ``start`` and ``end``."""

    def shape(self, p: float) -> float:
        return p


@SCHEDULES.register("polynomial")
class Polynomial(_Ramp):
    """GMP: final + (initial - final)(1 - p)^power, cubic by default (Zhu & Gupta 2017)."""

    def __init__(self, final: float, initial: float = 0.0, start: int = 0, end: int = 1, power: float = 3.0) -> None:
        super().__init__(final, initial, start, end)
        if power <= 0:
            raise SparsecraftError(f"polynomial power must be > 0, got {power}")
        self.power = float(power)

    def shape(self, p: float) -> float:
        return 1.0 - (1.0 - p) ** self.power


@SCHEDULES.register("cosine")
class Cosine(_Ramp):
    """Half cosine from ``initial`` to ``final`` (RigL/SET drop fraction)."""

    def shape(self, p: float) -> float:
        return (1.0 - math.cos(math.pi * p)) / 2.0


@SCHEDULES.register("exponential")
class Exponential(_Ramp):
    """Geometric interpolation initial*(final/initial)^p; with final 0, initial*exp(-rate*t)."""

    def __init__(
        self, final: float, initial: float = 1.0, start: int = 0, end: int = 1, rate: float | None = None
    ) -> None:
        super().__init__(final, initial, start, end)
        if initial == 0:
            raise SparsecraftError("exponential schedule needs a non-zero initial value")
        self.rate = rate

    def value(self, step: int) -> float:
        if self.rate is not None:
            t = max(0, min(step, self.end) - self.start)
            return self.final + (self.initial - self.final) * math.exp(-self.rate * t)
        if self.final == 0 or (self.final / self.initial) <= 0:
            raise SparsecraftError("exponential schedule with final 0 or a sign change needs 'rate'")
        return self.initial * (self.final / self.initial) ** self.progress(step)


class Segments(Schedule):
    """Several schedules in sequence: at step t the last segment whose start <= t applies."""

    def __init__(self, segments: Sequence[Schedule]) -> None:
        if not segments:
            raise SparsecraftError("a schedule list must not be empty")
        self.segments = sorted(segments, key=lambda s: s.start_step)
        self.start = self.segments[0].start_step

    def value(self, step: int) -> float:
        current = self.segments[0]
        for seg in self.segments:
            if seg.start_step <= step:
                current = seg
        return current.value(step)


def make_schedule(spec: Any) -> Schedule:
    """A schedule from a number, a dict with ``type``, a list, or a :class:`Schedule`."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, bool):
        raise SparsecraftError(f"a schedule cannot be a boolean ({spec})")
    if isinstance(spec, (int, float)):
        return Constant(spec)
    if isinstance(spec, dict):
        return SCHEDULES.build(spec)
    if isinstance(spec, (list, tuple)):
        segs: list[Schedule] = []
        for item in spec:
            if isinstance(item, (list, tuple)) and len(item) == 2:
                segs.append(OneShot(float(item[1]), int(item[0])))
            elif isinstance(item, dict):
                segs.append(make_schedule(item))
            else:
                raise SparsecraftError(f"schedule list items must be [step, value] pairs or dicts, got {item!r}")
        return Segments(segs)
    raise SparsecraftError(f"cannot read schedule {spec!r}: give a number, a dict or a list")


@dataclass(frozen=True)
class UpdateRule:
    """Update on steps start, start+every, ... strictly before ``stop`` (None = no stop)."""

    every: int = 1
    start: int = 0
    stop: int | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise SparsecraftError(f"update 'every' must be >= 1, got {self.every}")

    def should_update(self, step: int) -> bool:
        if step < self.start or (self.stop is not None and step >= self.stop):
            return False
        return (step - self.start) % self.every == 0
