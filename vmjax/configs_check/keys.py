"""Dotted keys of a ConfigDict ('model.vivit.pooling'): lookup, listing and the nearest one."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

import ml_collections

from vmjax.configs_check.errors import UnknownKeyError

ABSENT = object()  # `lookup`'s default: the key is not in the config


def lookup(config: ml_collections.ConfigDict, dotted_key: str, default: Any = ABSENT) -> Any:
    """config['a']['b'] for 'a.b', or `default` where a part is missing."""
    node: Any = config
    for part in dotted_key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return default
        node = node[part]
    return node


def has_key(config: ml_collections.ConfigDict, dotted_key: str) -> bool:
    return lookup(config, dotted_key) is not ABSENT


def dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    """Every key as 'a.b.c', sub-configs included (an override may replace one whole)."""
    for key in config.keys():
        yield prefix + key
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            yield from dotted_keys(value, f"{prefix}{key}.")


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """('a.b.c', value) of every field that is not a sub-config, in the config's order."""
    for key in config.keys():
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def _closest(word: str, keys: list[str], name) -> str | None:
    """The first of `keys` whose name(key) is closest to `word` (difflib), or None."""
    found = difflib.get_close_matches(word, [name(k) for k in keys], n=1, cutoff=0.6)
    return next(k for k in keys if name(k) == found[0]) if found else None


def nearest_key(config: ml_collections.ConfigDict, dotted_key: str) -> str | None:
    """The key of `config` closest to `dotted_key` (a typo), or None if none is close.

    Where the parent exists the typo is in the last name: a sibling's name first, then the
    same name elsewhere ('hidden_size' -> 'model.hidden_size'). Else the whole dotted key.
    """
    keys = list(dotted_keys(config))
    parent, _, leaf = dotted_key.rpartition(".")
    if not parent or has_key(config, parent):
        siblings = [k for k in keys if k.rpartition(".")[0] == parent]
        last = lambda k: k.rpartition(".")[2]  # noqa: E731
        return _closest(leaf, siblings, last) or _closest(leaf, keys, last)
    return _closest(dotted_key, [k for k in keys if not dotted_key.startswith(k + ".")], str)


def unknown_key(config: ml_collections.ConfigDict, dotted_key: str) -> UnknownKeyError:
    """The error for a key `config` lacks: the nearest key, else the keys its parent has."""
    parts = dotted_key.split(".")
    node, where = config, "config"
    for i in range(len(parts) - 1):  # the deepest parent that exists
        child = lookup(node, parts[i], None)
        if not isinstance(child, ml_collections.ConfigDict):
            break
        node, where = child, "config." + ".".join(parts[: i + 1])
    known = ", ".join(node.keys())
    hint = f"{where} has: {known if len(known) <= 150 else known[:147] + '...'}"
    return UnknownKeyError(dotted_key, nearest_key(config, dotted_key), hint)
