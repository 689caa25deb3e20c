"""What stops a training run safely: NaN/Inf, divergence, SIGTERM and preemption.

The one training loop (vmjax.train.fit) uses these, so every trainer stops the same way.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging

DIVERGENCE_MODES = ("stop", "off")


class Stopped(Exception):
    """SIGTERM arrived while the loop waited for data: the run stops without a new checkpoint."""


class NonFiniteGuard:
    """Watches each step's `finite` flag without a device sync per step.

    Flags are collected and read at log, eval and checkpoint steps. In 'stop' mode a NaN/Inf
    loss raises FloatingPointError naming the first bad step and the last good checkpoint
    (checked before every save, so no checkpoint holds the bad parameters); in 'skip' mode the
    step already kept the old parameters and this counts the skipped updates.
    """

    def __init__(self, mode: str, ckpt):
        self.mode, self.ckpt, self.pending, self.skipped = mode, ckpt, [], 0

    def add(self, step: int, finite) -> None:
        self.pending.append((step, finite))

    def check(self) -> None:
        if not self.pending:
            return
        steps = [s for s, _ in self.pending]
        flags = np.asarray(jax.device_get([f for _, f in self.pending]))
        self.pending = []
        bad = [s for s, ok in zip(steps, flags, strict=True) if not ok]
        if not bad:
            return
        if self.mode == "skip":
            self.skipped += len(bad)
            logging.warning(
                "Skipped %d update(s) with a NaN/Inf loss or gradient at steps %s (%d in all)",
                len(bad),
                bad[:10],
                self.skipped,
            )
            return
        raise self.error(f"train loss, gradient or parameter is NaN/Inf at step {bad[0]}")

    def error(self, what: str) -> FloatingPointError:
        return FloatingPointError(
            f"{what}; {last_good(self.ckpt)}. Lower the learning rate, or set "
            "config.on_nonfinite_loss='skip' to skip updates with a NaN/Inf loss."
        )


def last_good(ckpt) -> str:
    """'last good checkpoint: step N in DIR' (or 'none saved yet')."""
    ckpt.wait()
    good = ckpt.latest_step()
    where = f"step {good} in {ckpt.directory}" if good is not None else "none saved yet"
    return f"last good checkpoint: {where}"


class DivergenceGuard:
    """Stops a run whose train loss grows past `factor` times the loss of its first step.

    The reference is the loss of step 1 (before any update moved the parameters), kept in the
    run's history so a resumed run compares against the same number. NaN/Inf losses are the
    NonFiniteGuard's. mode 'off' (or factor <= 0) disables it.
    """

    def __init__(self, mode: str, factor: float, run, ckpt):
        if mode not in DIVERGENCE_MODES:
            raise ValueError(f"config.on_divergence={mode!r}; expected one of {DIVERGENCE_MODES}")
        self.enabled = mode == "stop" and factor > 0
        self.factor, self.run, self.ckpt = factor, run, ckpt
        self.reference = run.first_train_loss() if run is not None else None

    def first_step(self, loss) -> None:
        """Records step 1's loss as the reference (once per run)."""
        if self.reference is not None or self.run is None:
            return
        value = float(loss)
        if np.isfinite(value):
            self.reference = abs(value)
            if jax.process_index() == 0:
                self.run.record_first_train_loss(self.reference)

    def check(self, step: int, loss: float) -> None:
        if not self.enabled or self.reference is None or not np.isfinite(loss):
            return
        limit = self.factor * max(self.reference, 1e-8)
        if loss > limit:
            raise FloatingPointError(
                f"the train loss diverged at step {step}: {loss:.4g} > config.divergence_factor "
                f"{self.factor:g} x the first step's loss {self.reference:.4g}; "
                f"{last_good(self.ckpt)}. Lower config.optimizer.learning_rate, or set "
                "config.on_divergence='off'."
            )


class Preemption:
    """True at the step where every process should save and stop after a SIGTERM.

    One process: our SIGTERM handler sets a flag, and the loop saves and stops at the end of
    the step. If the signal arrives while the loop waits for data (`waiting`) and no batch
    comes within `grace` seconds, a SIGALRM raises `Stopped` there, so a stalled input pipeline
    cannot keep the run alive. Several processes: JAX's preemption service (started by
    jax.distributed.initialize) hears the signal and picks a step all processes reach.
    """

    def __init__(self, grace: float = 5.0):
        self.flag = False
        self.grace = grace
        self.previous: dict = {}
        self._waiting = False
        if jax.process_count() == 1:
            try:
                self.previous = {
                    signal.SIGTERM: signal.signal(signal.SIGTERM, self._handle),
                    signal.SIGALRM: signal.signal(signal.SIGALRM, self._stalled),
                }
            except ValueError:  # not the main thread: leave signals alone
                self.previous = {}

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.flag = True
        if self._waiting:
            signal.setitimer(signal.ITIMER_REAL, self.grace)

    def _stalled(self, signum, frame) -> None:
        del signum, frame
        if self._waiting:
            self._waiting = False
            raise Stopped("SIGTERM while waiting for the input pipeline")

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Around a blocking wait (the next batch): see the class docstring."""
        self._waiting = True
        if self.flag and self.previous:
            signal.setitimer(signal.ITIMER_REAL, self.grace)
        try:
            yield
        finally:
            self._waiting = False
            if self.previous:
                signal.setitimer(signal.ITIMER_REAL, 0)

    def reached(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.flag
        from jax.experimental import multihost_utils

        return multihost_utils.reached_preemption_sync_point(step)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
