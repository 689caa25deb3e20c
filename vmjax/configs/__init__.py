"""The shipped configs, by name: `--config yt8m:frame,smoke` works from any directory.

Each module here is a config file with `get_config(presets)` (ml_collections loads it by path;
`from vmjax.configs import yt8m` works too). `resolve` turns a --config value into a file and
its presets: a name ('yt8m', 'retrieval:smoke'), or a path to any config file, where the
checkout's spelling 'configs/yt8m.py' finds the shipped copy wherever it is run from.
"""

from __future__ import annotations

import difflib
import os

import ml_collections

from vmjax.configs_check.errors import ConfigError

FOLDER = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
    """The shipped configs' names (their file names without .py)."""
    return sorted(f[:-3] for f in os.listdir(FOLDER) if f.endswith(".py") and not f.startswith("_"))


def path(name: str) -> str:
    return os.path.join(FOLDER, name + ".py")


def resolve(spec: str, flag: str = "--config") -> tuple[str, str]:
    """(config file, presets) of NAME[:PRESETS] or PATH[:PRESETS]; ConfigError if none fits.

    flag: how the error names where the spec came from.
    """
    target, _, presets = spec.partition(":")
    available = ", ".join(names())
    if target.endswith(".py") or os.sep in target or "/" in target:
        file = os.path.abspath(os.path.expanduser(target))
        if os.path.isfile(file):
            return file, presets
        stem = os.path.splitext(os.path.basename(target))[0]
        if os.path.basename(os.path.dirname(target)) == "configs" and stem in names():
            return path(stem), presets  # the docs' configs/NAME.py outside the checkout
        raise ConfigError(
            flag, target, f"a config file or a config name ({available})", f"no such file: {file}"
        )
    if target in names():
        return path(target), presets
    near = difflib.get_close_matches(target, names(), n=1)
    hint = f"did you mean {near[0]!r}?" if near else ""
    raise ConfigError(flag, target, f"a config name ({available}) or a .py file", hint)


def get_config(spec: str) -> ml_collections.ConfigDict:
    """The config NAME[:PRESETS] or PATH[:PRESETS] names, as --config would load it."""
    from vmjax.tools import configs  # loads a config file by path

    file, presets = resolve(spec)
    return configs.get_config(file, presets)
