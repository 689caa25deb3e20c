"""What stops a training run safely: NaN/Inf, divergence, SIGTERM and preemption.

The one training loop (vmjax.train.fit) uses these, so every trainer stops the same way.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from absl import logging

from vmjax.errors import RunStopped

DIVERGENCE_MODES = ("stop", "skip", "off")


def _fetch(pending: list[tuple[int, Any]]) -> tuple[list[int], np.ndarray]:
    """The steps of `pending` (step, device flag) pairs and their flags, read in one transfer."""
    return [s for s, _ in pending], np.asarray(jax.device_get([f for _, f in pending]))


class Stopped(Exception):
    """SIGTERM arrived while the loop waited for data: the run stops without a new checkpoint."""


class NonFiniteGuard:
    """Watches each step's `finite` flag without a device sync per step.

    Flags are collected and read at log, eval and checkpoint steps. In 'stop' mode a NaN/Inf
    loss raises FloatingPointError naming the first bad step and the last good checkpoint
    (checked before every save, so no checkpoint holds the bad parameters); in 'skip' mode the
    step already kept the old parameters and this counts the skipped updates.
    """

    def __init__(self, mode: str, ckpt, can_skip: bool = True):
        self.mode, self.ckpt, self.pending, self.skipped = mode, ckpt, [], 0
        self.can_skip = can_skip  # the trainer supports on_nonfinite_loss='skip'

    def add(self, step: int, finite) -> None:
        self.pending.append((step, finite))

    def check(self) -> None:
        if not self.pending:
            return
        steps, flags = _fetch(self.pending)
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
        advice = "Lower config.optimizer.learning_rate"
        if self.can_skip and self.mode != "skip":
            advice += ", or set config.on_nonfinite_loss='skip' to skip updates with a NaN/Inf loss"
        return RunStopped(f"{what}; {last_good(self.ckpt)}. {advice}.")


def last_good(ckpt) -> str:
    """'last good checkpoint: step N in DIR' (or 'none saved yet')."""
    ckpt.wait()
    good = ckpt.latest_step()
    where = f"step {good} in {ckpt.directory}" if good is not None else "none saved yet"
    return f"last good checkpoint: {where}"


class DivergenceGuard:
    """Stops (or skips) train steps whose loss grows past `factor` times the first step's loss.

    The reference is the loss of step 1 (before any update moved the parameters), kept in the
    run's history so a resumed run compares against the same number. NaN/Inf losses are the
    NonFiniteGuard's. mode 'stop' raises at the next log step naming the step and the last good
    checkpoint; 'skip' hands the step `limit()` so it keeps the old parameters where its loss is
    above it (metrics['diverged']), counts and logs those steps, and stops once `max_skips`
    consecutive steps were skipped; 'off' (or factor <= 0) disables it.
    """

    def __init__(self, mode: str, factor: float, run, ckpt, max_skips: int = 1):
        if mode not in DIVERGENCE_MODES:
            raise ValueError(f"config.on_divergence={mode!r}; expected one of {DIVERGENCE_MODES}")
        self.mode = mode if factor > 0 else "off"
        self.enabled = self.mode == "stop"
        self.skipping = self.mode == "skip"
        self.factor, self.run, self.ckpt, self.max_skips = factor, run, ckpt, max_skips
        self.reference = run.first_train_loss() if run is not None else None
        self.pending: list = []
        self.skipped = 0  # skipped steps in all (this process's session)
        self.consecutive: list[int] = []  # the current run of skipped steps

    def first_step(self, loss) -> None:
        """Records step 1's loss as the reference (once per run)."""
        if self.reference is not None or self.run is None:
            return
        value = float(loss)
        if np.isfinite(value):
            self.reference = abs(value)
            if jax.process_index() == 0:
                self.run.record_first_train_loss(self.reference)

    def limit(self) -> float:
        """The highest loss a step may have and keep its update ('skip'; inf until step 1)."""
        if self.reference is None:
            return float("inf")
        return self.factor * max(self.reference, 1e-8)

    def check(self, step: int, loss: float) -> None:
        if not self.enabled or self.reference is None or not np.isfinite(loss):
            return
        limit = self.limit()
        if loss > limit:
            raise RunStopped(
                f"the train loss diverged at step {step}: {loss:.4g} > config.divergence_factor "
                f"{self.factor:g} x the first step's loss {self.reference:.4g}; "
                f"{last_good(self.ckpt)}. Lower config.optimizer.learning_rate, or set "
                "config.on_divergence='skip' (skip such steps) or 'off'."
            )

    def add(self, step: int, diverged) -> None:
        """A 'skip' step's `diverged` flag (a device scalar), read at the next `check_skips`."""
        if self.skipping:
            self.pending.append((step, diverged))

    def check_skips(self) -> None:
        """Counts and logs the skipped steps; raises after `max_skips` consecutive ones."""
        if not self.pending:
            return
        steps, flags = _fetch(self.pending)
        self.pending = []
        bad = [s for s, skipped in zip(steps, flags, strict=True) if skipped]
        for s, skipped in zip(steps, flags, strict=True):
            self.consecutive = [*self.consecutive, s] if skipped else []
            if len(self.consecutive) >= self.max_skips:
                first, last = self.consecutive[0], self.consecutive[-1]
                raise RunStopped(
                    f"the train loss diverged at step {last}: {len(self.consecutive)} consecutive "
                    f"steps ({first}..{last}) had a loss above config.divergence_factor "
                    f"{self.factor:g} x the first step's loss {self.reference:.4g} and were "
                    f"skipped (config.divergence_max_skips={self.max_skips}); "
                    f"{last_good(self.ckpt)}. Lower config.optimizer.learning_rate, or raise "
                    "config.divergence_factor."
                )
        if bad:
            self.skipped += len(bad)
            logging.warning(
                "Skipped %d update(s) whose train loss was above %g x the first step's loss "
                "(on_divergence='skip') at steps %s (%d in all)",
                len(bad),
                self.factor,
                bad[:10],
                self.skipped,
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
