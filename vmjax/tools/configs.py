"""Config files by path: configs/*.py are files, not a package (ml_collections' config_flags
loads them by path), so configs that build on another, benchmarks and tests load them here."""

from __future__ import annotations

import importlib.util
import os
import types

import ml_collections


def load_module(path: str | os.PathLike) -> types.ModuleType:
    """The config file at `path` as a fresh module (its get_config, PRESETS, ...)."""
    path = os.fspath(path)
    name = "vmjax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path} is not a Python config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(path: str | os.PathLike, arg: str = "") -> ml_collections.ConfigDict:
    """`get_config(arg)` of the config file at `path` (arg: its presets, e.g. 'smoke')."""
    return load_module(path).get_config(arg)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> None:
    """Sets dotted fields in place, as `--config.a.b=value` would: {'a.b': value}."""
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        target = config
        for p in parents:
            target = target[p]
        target[leaf] = value
