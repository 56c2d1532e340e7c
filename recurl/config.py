"""Declared ranges for config fields, checked once when a config is built (before any work starts).

A config dataclass lists its constraints in a ``RANGES`` class variable and calls :func:`check_config`
from ``__post_init__``::

    RANGES: ClassVar[Ranges] = {"num_envs": AT_LEAST_1, "gamma": Range(0, 1, lo_open=True), "device": DEVICE}

Every field is also type-checked against its annotation (``int``, ``float``, ``bool``, ``str``, their
``| None`` and ``tuple[int, ...]`` forms) and every float must be finite, ranged or not, so a NaN or a
string from the Python API fails here rather than deep inside training. Tuple fields are checked element by
element. Problems are reported by flag name (``--checkpoint-every``), as ``recurl train`` spells them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from recurl.errors import RecurlError


class Check(Protocol):
    """A constraint on one value: :meth:`ok` tests it, :attr:`allowed` says what is allowed."""

    allowed: str

    def ok(self, value: Any) -> bool:
        """Whether ``value`` satisfies the constraint."""
        ...


@dataclass(frozen=True)
class Range:
    """``lo <= value <= hi`` (either end may be open or absent)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, value: Any) -> bool:
        """Whether ``value`` lies in the range."""
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    @property
    def allowed(self) -> str:
        """``>= 1``, ``> 0``, ``in (0, 1]``, ..."""
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of strings."""

    values: tuple[str, ...]

    def ok(self, value: Any) -> bool:
        """Whether ``value`` is one of :attr:`values`."""
        return value in self.values

    @property
    def allowed(self) -> str:
        """The choices, comma-separated."""
        return "one of " + ", ".join(self.values)


@dataclass(frozen=True)
class Matches:
    """A string matching a regular expression in full; ``allowed`` describes it in words."""

    pattern: str
    allowed: str

    def ok(self, value: Any) -> bool:
        """Whether ``value`` matches :attr:`pattern`."""
        return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None


Ranges = Mapping[str, Check]

AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)
POSITIVE = Range(0, lo_open=True)
UNIT = Range(0, 1)
DISCOUNT = Range(0, 1, lo_open=True)
DEVICE = Matches(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")


def flag(name: str) -> str:
    """The command-line spelling of a config field: ``checkpoint_every`` -> ``--checkpoint-every``."""
    return "--" + name.replace("_", "-")


def check_value(name: str, value: Any, check: Check | None = None, kind: type | None = None) -> None:
    """Raise one :class:`RecurlError` naming flag ``name`` unless ``value`` (or, for a tuple or list, each element)
    has type ``kind`` (``int`` refuses bools and floats; ``float`` takes ints), is finite when a float and
    satisfies ``check``. ``None`` always passes (fields that allow it are typed ``X | None``)."""
    for v in value if isinstance(value, tuple | list) else (value,):
        if v is None:
            continue
        if kind is not None and not _is_kind(v, kind):
            raise RecurlError(f"{flag(name)} must be {_KIND_WORDS[kind]}, got {value!r}")
        if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and not math.isfinite(v):
            raise RecurlError(f"{flag(name)} must be a finite number, got {value!r}")
        if check is not None and not check.ok(v):
            raise RecurlError(f"{flag(name)} must be {check.allowed}, got {value!r}")


def check_config(cfg: Any) -> None:
    """Check every field of the dataclass ``cfg`` against its annotation and ``type(cfg).RANGES``."""
    ranges: Ranges = getattr(cfg, "RANGES", {})
    kinds = _field_kinds(type(cfg))
    for f in dataclasses.fields(cfg):
        check_value(f.name, getattr(cfg, f.name), ranges.get(f.name), kinds.get(f.name))


_KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _is_kind(v: Any, kind: type) -> bool:
    if kind in (int, float):  # numpy scalars count; bools (an int subclass) do not
        return isinstance(v, numbers.Integral if kind is int else numbers.Real) and not isinstance(v, bool)
    return isinstance(v, kind)


@functools.cache
def _field_kinds(cls: type) -> dict[str, type]:
    """``{field: int | float | bool | str}`` for fields annotated with one of those (or its ``| None`` or
    ``tuple[..., ...]`` form); other annotations (dicts, nested configs, Literals) are left to their owners."""
    hints = typing.get_type_hints(cls)
    return {name: kind for name, hint in hints.items() if (kind := _scalar(hint)) is not None}


def _scalar(hint: Any) -> type | None:
    if hint in _KIND_WORDS:
        return hint
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not type(None)]
        return _scalar(rest[0]) if len(rest) == 1 else None
    if origin is tuple:
        elems = {a for a in args if a is not Ellipsis}
        return _scalar(elems.pop()) if len(elems) == 1 else None
    return None


@dataclass(frozen=True)
class EvalSchedule:
    """Periodic evaluation and stopping when solved, for algorithms that step envs (SB3's ``EvalCallback``
    with ``StopTrainingOnRewardThreshold``). A mixin: PPO's and R2D2's configs inherit these fields."""

    eval_every: int = 0
    """Evaluate deterministically every this many env steps (0: never; --stop-at-return needs it)."""
    stop_at_return: float | None = None
    """Stop once --hold consecutive evaluations reach this mean return (None: train the whole budget)."""
    hold: int = 1
    """Consecutive evaluations >= --stop-at-return needed to stop (the policy must stay solved)."""

    RANGES: typing.ClassVar[Mapping[str, Check]] = {"eval_every": Range(0), "hold": Range(1)}

    def check_schedule(self) -> None:
        """The cross-field rule: stopping needs evaluations."""
        if self.stop_at_return is not None and self.eval_every < 1:
            raise RecurlError("--stop-at-return needs --eval-every N (env steps between evaluations)")
