"""Config checks at the door: `validate(config)` raises ConfigError before a run starts.

table.py holds each field's rule (a new field is one line), checks.py the rules between
fields; keys.py finds the nearest key to a typo (`nearest_key`, `unknown_key`).
"""

from __future__ import annotations

import ml_collections

from vmjax.configs_check.checks import CHECKS
from vmjax.configs_check.errors import MAX_LINES, ConfigError, UnknownKeyError
from vmjax.configs_check.keys import dotted_keys, has_key, leaves, nearest_key, unknown_key
from vmjax.configs_check.rules import check_field
from vmjax.configs_check.table import RULES, TASK_RULES

__all__ = [
    "MAX_LINES",
    "RULES",
    "ConfigError",
    "UnknownKeyError",
    "dotted_keys",
    "has_key",
    "nearest_key",
    "unknown_key",
    "validate",
]


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
    """Raises ConfigError at the first field a consumer would reject; returns None if none.

    num_devices: every device of the job; batch sizes, mesh.fsdp and grad_accum must split
    over them. None skips those checks (e.g. before JAX is initialised).
    """
    if num_devices is not None and (isinstance(num_devices, bool) or num_devices < 1):
        raise ValueError(f"num_devices={num_devices!r}; expected an int >= 1")
    task = config.get("task", "classify")
    check_field("task", task, RULES["task"])
    rules = RULES | TASK_RULES.get(task, {})
    for key, value in leaves(config):
        if key in rules:
            check_field(key, value, rules[key])
    for check in CHECKS:
        error = check(config, num_devices)
        if error is not None:
            raise error
