"""Kinds of rule for one config field: each says what it allows and checks a value.

Choices that code defines are named as 'module:NAME' (e.g. 'vmjax.train.step:DTYPES') and
imported on the first check, so the schema follows the code and importing it needs no JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import numbers
import re
from typing import Any, Protocol

from vmjax.configs_check.errors import ConfigError


class Rule(Protocol):
    def describe(self) -> str: ...  # what is allowed, for "expected ..."

    def ok(self, value: Any) -> bool: ...


@functools.cache
def code(source: str) -> Any:
    """The object 'module:NAME' names, imported on first use."""
    module, _, name = source.partition(":")
    return getattr(importlib.import_module(module), name)


def names_in(source: str) -> tuple:
    """The names 'module:NAME' holds: a tuple's items, or a dict's keys."""
    return tuple(code(source))


def _choices(sources: tuple) -> tuple:
    return tuple(n for s in sources for n in (names_in(s) if isinstance(s, str) else s))


def quoted(values) -> str:
    return ", ".join(repr(v) for v in values)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class Int:
    lo: int | None = None
    hi: int | None = None

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"an int in [{self.lo}, {self.hi}]"
        return "an int" + (f" >= {self.lo}" if self.lo is not None else "")

    def ok(self, v: Any) -> bool:
        if not _is_int(v):
            return False
        return (self.lo is None or v >= self.lo) and (self.hi is None or v <= self.hi)


@dataclasses.dataclass(frozen=True)
class Float:
    """A finite number (ints too) within [lo, hi]; lo_open / hi_open leave an end out."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        if self.lo is not None and self.lo == self.hi:
            return f"{self.lo:g}"
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"a number in {left}{self.lo:g}, {self.hi:g}{right}"
        if self.lo is not None:
            return f"a number {'>' if self.lo_open else '>='} {self.lo:g}"
        return "a number"

    def ok(self, v: Any) -> bool:
        if not _is_number(v):
            return False
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below


@dataclasses.dataclass(frozen=True)
class Bool:
    def describe(self) -> str:
        return "true or false"

    def ok(self, v: Any) -> bool:
        return isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class Str:
    nonempty: bool = False
    what: str = ""  # what the text names, for the message

    def describe(self) -> str:
        return self.what or ("a non-empty string" if self.nonempty else "a string")

    def ok(self, v: Any) -> bool:
        return isinstance(v, str) and (bool(v) or not self.nonempty)


@dataclasses.dataclass(frozen=True, init=False)
class OneOf:
    """One of the sources' values: tuples, or 'module:NAME' of the code that reads the field."""

    sources: tuple

    def __init__(self, *sources):
        object.__setattr__(self, "sources", sources)

    def describe(self) -> str:
        return f"one of {quoted(_choices(self.sources))}"

    def ok(self, v: Any) -> bool:
        return isinstance(v, str) and v in _choices(self.sources)


@dataclasses.dataclass(frozen=True, init=False)
class Names:
    """Comma-separated names from the sources: at least one, none twice."""

    sources: tuple

    def __init__(self, *sources):
        object.__setattr__(self, "sources", sources)

    def describe(self) -> str:
        return f"comma-separated names from {quoted(_choices(self.sources))}"

    def ok(self, v: Any) -> bool:
        if not isinstance(v, str):
            return False
        names = [n.strip() for n in v.split(",") if n.strip()]
        unique = len(set(names)) == len(names)
        return bool(names) and unique and set(names) <= set(_choices(self.sources))


@dataclasses.dataclass(frozen=True)
class Regex:
    def describe(self) -> str:
        return "a Python regular expression"

    def ok(self, v: Any) -> bool:
        if not isinstance(v, str):
            return False
        try:
            re.compile(v)
        except re.error:
            return False
        return True


@dataclasses.dataclass(frozen=True)
class Template:
    """A str.format template with the field `field` and no other (e.g. 'a video of {name}')."""

    field: str

    def describe(self) -> str:
        return f"a text with {{{self.field}}} and no other {{...}}"

    def ok(self, v: Any) -> bool:
        if not isinstance(v, str) or "{" + self.field + "}" not in v:
            return False
        try:
            v.format(**{self.field: "x"})
        except (KeyError, IndexError, ValueError):
            return False
        return True


@dataclasses.dataclass(frozen=True)
class Seq:
    """A tuple (or list) of `length` items (one or more if None), each allowed by `item`."""

    item: Any
    length: int | None = None
    increasing: bool = False  # a (lo, hi) range

    def describe(self) -> str:
        n = self.length if self.length is not None else "one or more"
        order = ", lo <= hi" if self.increasing else ""
        return f"a tuple of {n} values, each {self.item.describe()}{order}"

    def ok(self, v: Any) -> bool:
        if not isinstance(v, tuple | list) or not v:
            return False
        if self.length is not None and len(v) != self.length:
            return False
        if not all(self.item.ok(x) for x in v):
            return False
        return not self.increasing or all(a <= b for a, b in zip(v, v[1:], strict=False))


@dataclasses.dataclass(frozen=True, init=False)
class AnyOf:
    options: tuple

    def __init__(self, *options):
        object.__setattr__(self, "options", options)

    def describe(self) -> str:
        return " or ".join(o.describe() for o in self.options)

    def ok(self, v: Any) -> bool:
        return any(o.ok(v) for o in self.options)


def check_field(key: str, value: Any, rule: Rule) -> None:
    """Raises ConfigError unless `rule` allows `value` at `key`."""
    if rule.ok(value):
        return
    # None is a required field's placeholder (ml_collections.config_dict.placeholder).
    hint = f"this config needs it: pass --config.{key}=VALUE" if value is None else ""
    raise ConfigError(key, value, rule.describe(), hint)
