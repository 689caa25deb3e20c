"""ConfigError: a config field with a value its consumers would reject, said in a few lines."""

from __future__ import annotations

from typing import Any

from vmjax.errors import UserError

MAX_LINES = 5  # a user error is read at a glance


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConfigError(UserError, ValueError):
    """The key, the bad value and what is allowed (plus an optional hint line or two)."""

    def __init__(self, key: str, value: Any, allowed: str, hint: str = ""):
        super().__init__(key, value, allowed, hint)
        self.key, self.value, self.allowed, self.hint = key, value, allowed, hint

    def __str__(self) -> str:
        # A config key prints as config.KEY; a flag (key '--config') prints as itself.
        where = self.key if self.key.startswith("-") else f"config.{self.key}"
        first = f"{where}={short_repr(self.value)}: expected {self.allowed}"
        return "\n".join([first, *self.hint.splitlines()][:MAX_LINES])


class UnknownKeyError(ConfigError):
    """A key the config does not have (a typo in an override), with the nearest key it has."""

    def __init__(self, key: str, nearest: str | None, hint: str = ""):
        super().__init__(key, None, "a key of the config", hint)
        self.nearest = nearest

    def __str__(self) -> str:
        if self.nearest:
            return f"unknown config key {self.key!r}; did you mean {self.nearest!r}?"
        return "\n".join([f"unknown config key {self.key!r}", *self.hint.splitlines()][:MAX_LINES])
