"""Entry-point plumbing: a --config flag that takes config names, and `run`, which ends user
errors with a few lines on stderr and exit status 2 instead of a traceback.

    from vmjax import cli
    CONFIG = cli.define_config_flag()          # --config yt8m:smoke, or a path
    ...
    if __name__ == "__main__":
        cli.run(main)

User errors are UserError (vmjax.errors; ConfigError is one), app.UsageError, and flag parse
errors: unknown --config.KEY overrides (with the nearest key), override values of the wrong
type, a missing config file or unknown presets. Any other exception is a bug and keeps its
traceback; --debug or VMJAX_DEBUG=1 shows the traceback of user errors too.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import ml_collections
from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from vmjax import configs
from vmjax.configs_check import MAX_LINES, ConfigError, has_key, unknown_key
from vmjax.errors import RunStopped, UserError

__all__ = ["EXIT_USER_ERROR", "UserError", "define_config_flag", "parse_flags", "run"]

EXIT_USER_ERROR = 2  # as argparse: the command line (or a file it names) is wrong
EXIT_RUN_STOPPED = 3  # a run stopped by its guards (NaN/Inf, divergence): errors.RunStopped
DEBUG_ENV = "VMJAX_DEBUG"
CONFIG_HELP = (
    "A config: a shipped name (" + ", ".join(configs.names()) + ") or a .py file with "
    "get_config(arg), optionally followed by :PRESETS (e.g. yt8m:frame,smoke). Any field can "
    "be overridden with --config.FIELD=VALUE, e.g. --config.batch_size=64."
)
_TYPE_NAMES = {int: "an int", float: "a number", bool: "true or false", str: "a string"}


class _ConfigSpecParser(ConfigFileFlagParser):
    """ml_collections' config file parser, also for names: NAME[:PRESETS] or PATH[:PRESETS]."""

    def __init__(self, name: str, lock_config: bool = True):
        super().__init__(name, lock_config)
        self.config = None  # the config last loaded: the keys overrides are checked against

    def parse(self, spec: str):
        self.config = None
        file, presets = configs.resolve(spec, f"--{self.name}")
        try:
            config = super().parse(f"{file}:{presets}" if presets else file)
        except (TypeError, ValueError) as e:
            # ml_collections pastes the config's whole traceback into the message; the config's
            # own words (e.g. "unknown preset(s) ['x']; choose from ...") are the message.
            cause = e.__context__ or e
            if isinstance(cause, ValueError):
                name = os.path.splitext(os.path.basename(file))[0]
                allowed = f"presets that {name} accepts"
                raise ConfigError(f"--{self.name}", spec, allowed, str(cause)) from cause
            raise TypeError(str(cause)) from None
        except OSError as e:  # unreadable (a missing file is resolve's ConfigError)
            raise ConfigError(f"--{self.name}", spec, "a readable config file", str(e)) from e
        if not isinstance(config, ml_collections.ConfigDict):
            kind = type(config).__name__
            raise ConfigError(
                f"--{self.name}", spec, "a file whose get_config() returns a ConfigDict", kind
            )
        self.config = config
        return config


def define_config_flag(
    name: str = "config",
    help_string: str = CONFIG_HELP,
    flag_values: flags.FlagValues = flags.FLAGS,
) -> flags.FlagHolder:
    """`config_flags.DEFINE_config_file(name, lock_config=True)` that also takes config names.

    Overrides (--NAME.FIELD=VALUE) are ml_collections' own; only the file lookup differs
    (vmjax.configs.resolve). The flag has no default: mark it required.
    """
    holder = config_flags.DEFINE_config_file(
        name, None, help_string, flag_values=flag_values, lock_config=True
    )
    # absl's Flag parses through its `parser` attribute; the override handling stays theirs.
    flag_values[name].parser = _ConfigSpecParser(name, lock_config=True)
    return holder


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """`flag_values(argv)`, with flag mistakes raised as UserError (ConfigError for --config).

    Returns the arguments that are not flags, as absl does. Errors that are no user's mistake
    propagate as they are.
    """
    try:
        return flag_values(argv)
    except Exception as error:
        user_error = _flag_error(error, argv, flag_values)
        if user_error is None or user_error is error:
            raise
        if any(e is user_error for e in _chain(error)):  # our parser's, wrapped by absl
            raise user_error from None
        raise user_error from error


def run(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> None:
    """`absl.app.run(main)`, with user errors as `error: ...` (<= 5 lines) and exit status 2.

    argv: defaults to sys.argv (ml_collections reads overrides from sys.argv in any case).
    """
    if "debug" not in flags.FLAGS:
        flags.DEFINE_bool("debug", False, f"Show the traceback of user errors too ({DEBUG_ENV}=1).")
    args = list(sys.argv if argv is None else argv)
    debug = _debug_asked(args)

    def guarded(fn: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
        def call(argv: list[str]) -> Any:
            try:
                return fn(argv)
            except (UserError, app.UsageError) as error:
                _exit_with(error, debug)
            except RunStopped as error:  # the run's guards: its message says what to change
                _exit_with(error, debug, EXIT_RUN_STOPPED)

        return call

    app.run(guarded(main), argv=args, flags_parser=guarded(parse_flags))


def _debug_asked(argv: list[str]) -> bool:
    """--debug / --nodebug / --debug=BOOL (the last one wins) or VMJAX_DEBUG=1, before parsing."""
    debug = os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
    for arg in argv[1:]:
        if arg == "--":
            break
        name, _, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name in ("debug", "nodebug"):
            on = value.lower() not in ("0", "false", "no") if value else True
            debug = on if name == "debug" else False
    return debug


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _override_keys(argv: list[str], name: str, flag_values: flags.FlagValues) -> list[str]:
    """FIELD of every --NAME.FIELD[=VALUE] in argv, found as ml_collections finds them."""
    try:
        argv = flag_values.read_flags_from_files(argv, force_gnu=False)
    except flags.Error:
        pass  # a bad --flagfile: absl's own error says so
    pattern = re.compile(rf"-{{1,2}}(no)?{re.escape(name)}\.")
    return [a.split("=", 1)[0].split(".", 1)[1] for a in argv if pattern.match(a)]


def _flag_error(
    error: Exception, argv: list[str], flag_values: flags.FlagValues
) -> UserError | None:
    """The user error behind a failed flag parse, or None if it is a bug."""
    for e in _chain(error):
        if isinstance(e, UserError):
            return e
    for name in list(flag_values):
        parser = flag_values[name].parser
        config = parser.config if isinstance(parser, _ConfigSpecParser) else None
        if config is None:
            continue
        for key in _override_keys(argv, name, flag_values):
            # ml_collections also takes list items ('a[0]'): those it judges itself.
            if "[" not in key and not has_key(config, key):
                return unknown_key(config, key)
        bad_value = re.match(rf"flag --{re.escape(name)}\.([\w.]+)=(.*?): (.*)", str(error), re.S)
        if isinstance(error, flags.IllegalFlagValueError) and bad_value:
            key, value, reason = bad_value.groups()
            kind = config_path.get_type(key, config)
            allowed = _TYPE_NAMES.get(kind, f"a {getattr(kind, '__name__', kind)}")
            return ConfigError(key, value, allowed, "" if kind in _TYPE_NAMES else reason)
    if isinstance(error, flags.Error):
        return UserError(str(error))
    return None


def _exit_with(error: BaseException, debug: bool, status: int = EXIT_USER_ERROR) -> NoReturn:
    """Prints `error` in at most MAX_LINES lines (debug: after its traceback) and exits with
    `status` (2: a user error)."""
    if debug:
        traceback.print_exception(error)
    lines = str(error).strip().splitlines() or [type(error).__name__]
    lines[0] = f"error: {lines[0]}"
    sys.stderr.write("\n".join(lines[:MAX_LINES]) + "\n")
    sys.exit(status)


_CHATTY_LIBRARIES = ("/orbax/", "/grain/", "/jax/")


class _QuietLibraries(std_logging.Filter):
    """Keeps libraries' INFO chatter (orbax logs each save in ~20 lines) off the console."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or not any(
            lib in record.pathname for lib in _CHATTY_LIBRARIES
        )


def setup_logging() -> None:
    """absl logging for a command: INFO on process 0, warnings only on the others.

    Call after jax.distributed is initialised (it asks JAX for the process index).
    """
    from absl import logging

    # The filter first: starting the backends logs libtpu's "Unable to initialize backend".
    logging.get_absl_handler().addFilter(_QuietLibraries())
    import jax

    logging.set_verbosity(logging.INFO if jax.process_index() == 0 else logging.WARNING)
    if jax.process_count() > 1:
        logging.info(
            "jax.distributed: process %d of %d, %d local of %d devices",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )
