"""Errors a user can fix: the entry points print them in a few lines and exit with status 2."""


class UserError(Exception):
    """A mistake in what the user asked for (a config, a flag, a file, a run directory).

    Its message says what is wrong, the value, what is allowed and how to proceed; the entry
    points print it without a traceback (vmjax.cli).
    """


class RunDirectoryError(UserError):
    """A run directory that cannot be used as asked (config mismatch, lock held, no checkpoint)."""


class DataError(UserError):
    """Input files that hold nothing usable (no readable record, the wrong data level)."""


class RunStopped(FloatingPointError):
    """A training run stopped by its guards (vmjax.train.guards): a NaN/Inf loss, gradient or
    parameter, or a diverged loss. Its message names the step, the last good checkpoint and
    what to change; the entry points print it without a traceback and exit with status 3."""
