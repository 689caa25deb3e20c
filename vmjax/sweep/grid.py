"""A sweep's runs: grid flags -> the cross product of overrides x seeds, each with a stable name.

A run's name is its overrides, sorted by key, then its seed: `model.num_mixtures=4,seed=1`.
Values are written in their canonical form (the value the config field takes, so `1e-3` and
`0.001` name the same run), so the same grid names the same directories on every invocation,
and adding a value or seeds later adds only new names.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import itertools
import re
import warnings
from collections.abc import Sequence

KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
SAFE = re.compile(r"[^A-Za-z0-9._,+=-]")  # characters kept as they are in a directory name
MAX_NAME = 200  # below the 255-byte limit of most file systems, with room for a hash


class SweepError(ValueError):
    """A user mistake in the sweep's flags or directory: reported in a line or two, exit 2."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of the sweep: a cell of the grid (its overrides) with one seed."""

    overrides: tuple[tuple[str, str], ...]  # (config key, canonical value), sorted by key
    seed: int

    @property
    def cell(self) -> str:
        """The name shared by the seeds of one grid cell."""
        return cell_name(self.overrides)

    @property
    def name(self) -> str:
        """The run's directory name under OUT/runs/."""
        return _safe(",".join([*(f"{k}={v}" for k, v in self.overrides), f"seed={self.seed}"]))

    def flags(self) -> list[str]:
        """The vmjax.main flags that make this run (after the sweep-wide --set ones)."""
        return [*(f"--config.{k}={v}" for k, v in self.overrides), f"--config.seed={self.seed}"]


def cell_name(overrides: Sequence[tuple[str, str]]) -> str:
    return _safe(",".join(f"{k}={v}" for k, v in overrides)) if overrides else "default"


def _safe(name: str) -> str:
    """`name` if it is a portable directory name, else a readable version plus a short hash."""
    clean = SAFE.sub("_", name)
    if clean == name and len(name) <= MAX_NAME:
        return name
    # Replaced characters or a cut could make two runs collide: the hash of the exact text
    # keeps them apart.
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{clean[:MAX_NAME]}-{digest}"


def parse_assignment(text: str, flag: str) -> tuple[str, str]:
    """'KEY=VALUE' -> (KEY, VALUE), with KEY a dotted config path."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not KEY.fullmatch(key):
        raise SweepError(
            f"{flag} {text!r}: expected KEY=VALUE with KEY a config field such as "
            "optimizer.learning_rate"
        )
    if key == "config" or key.startswith("config."):
        raise SweepError(f"{flag} {text!r}: write the field without 'config.', e.g. {key[7:]}=...")
    return key, value


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """['KEY=V1,V2', ...] -> [(KEY, [V1, V2]), ...] in the order given."""
    axes: list[tuple[str, list[str]]] = []
    for spec in specs:
        key, text = parse_assignment(spec, "--grid")
        values = [v.strip() for v in text.split(",")]
        if not text.strip() or any(not v for v in values):
            raise SweepError(f"--grid {spec!r}: expected KEY=V1,V2,... with no empty value")
        if len(set(values)) != len(values):
            raise SweepError(f"--grid {spec!r}: a value appears twice")
        if key == "seed":
            raise SweepError(f"--grid {spec!r}: seeds come from --seeds N (seeds 0..N-1)")
        if key in dict(axes):
            raise SweepError(f"--grid {spec!r}: {key} is already a grid axis; give its values once")
        axes.append((key, values))
    return axes


def expand(axes: Sequence[tuple[str, Sequence[str]]], seeds: int) -> list[Run]:
    """The cross product of the axes' values, each with seeds 0..seeds-1 (cells in grid order)."""
    if seeds < 1:
        raise SweepError(f"--seeds {seeds}: expected at least 1")
    keys = [k for k, _ in axes]
    runs = []
    for values in itertools.product(*(v for _, v in axes)):
        overrides = tuple(sorted(zip(keys, values, strict=True)))
        runs.extend(Run(overrides, seed) for seed in range(seeds))
    return runs


def canonical(value) -> str:
    """The text a config value is named by (and passed to vmjax.main as)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int | float):
        return repr(value)  # shortest text that reads back as the same number
    return str(value)


def resolve(
    config: str, sets: Sequence[tuple[str, str]], axes: Sequence[tuple[str, Sequence[str]]]
) -> tuple[list[tuple[str, str]], list[tuple[str, list[str]]], int | None]:
    """Checks every override against the config; returns the sets and the axes with canonical
    values, and the final step (config.num_train_steps, None for a config without one).

    Each grid value is loaded as vmjax.main would load it, so a misspelt key, a value of the
    wrong type or a bad preset stops the sweep here rather than in each of its runs.
    """
    from vmjax import configs
    from vmjax.errors import UserError

    try:  # a shipped config's name (yt8m:smoke) or a file
        path, presets = configs.resolve(config)
    except UserError as e:
        raise SweepError(str(e)) from None
    config = f"{path}:{presets}" if presets else path
    base = [f"--config.{k}={v}" for k, v in sets]
    label = f"--config {config}" + "".join(f" --set {k}={v}" for k, v in sets)
    loaded = _load(config, base, label)
    final_step = loaded.get("num_train_steps")
    sets = [(k, canonical(_field(loaded, k))) for k, _ in sets]
    base = [f"--config.{k}={v}" for k, v in sets]
    canonical_axes = []
    for key, values in axes:
        texts = []
        for v in values:
            loaded = _load(config, [*base, f"--config.{key}={v}"], f"--grid {key}={v}")
            texts.append(canonical(_field(loaded, key)))
        if len(set(texts)) != len(texts):
            raise SweepError(f"--grid {key}={','.join(values)}: two values are the same {texts}")
        canonical_axes.append((key, texts))
    return sets, canonical_axes, final_step


def _field(config, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def _load(config: str, overrides: Sequence[str], label: str):
    """The ConfigDict vmjax.main builds from --config `config` and the override flags."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["vmjax.main", f"--config={config}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    try:
        with warnings.catch_warnings():  # ml_collections imports config files with load_module
            warnings.simplefilter("ignore", DeprecationWarning)
            values(argv)
            return values.config
    except (AttributeError, KeyError) as e:  # ml_collections: an unknown field, and a guess
        text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
        if text[:1] in "'\"":  # the repr of a KeyError's message, inside the AttributeError
            with contextlib.suppress(ValueError, SyntaxError):
                text = str(ast.literal_eval(text))
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        raise SweepError(f"{label}: no config field {'; '.join(lines)}") from None
    except (flags.Error, TypeError, ValueError) as e:
        # Errors in the config file carry the loader's traceback; its last line says what.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise SweepError(f"{label}: {lines[-1] if lines else type(e).__name__}") from None
