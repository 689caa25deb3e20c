"""orbax checkpoints of the train state together with the data iterator state."""

from __future__ import annotations

import json
import os

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from vmjax.train.state import TrainState


class Checkpointer:
    """Saves (asynchronously) and restores {state, data iterator state} by step.

    orbax writes each step into a temporary directory and renames it when complete, so a crash
    never leaves a half-written checkpoint that looks valid. Every process calls save/restore:
    orbax writes the (possibly sharded) state once, and grain's handler writes each process's
    iterator state to `data/process_<i>-of-<n>.json`.
    """

    def __init__(self, directory: str, keep: int):
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=True
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState, data_iterator=None) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            # Snapshot now: the iterator moves on while orbax finishes the save in the background.
            items["data"] = grain.checkpoint.CheckpointSave(_Snapshot(data_iterator.get_state()))
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, like: TrainState, data_iterator=None) -> TrainState:
        """Restores `step` into the structure, shapes and shardings of `like`.

        With `data_iterator`, also sets it to the saved position (in place).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            if not os.path.isdir(os.path.join(self.directory, str(step), "data")):
                raise FileNotFoundError(
                    f"checkpoint {os.path.join(self.directory, str(step))} has no data iterator "
                    "state (data/); it cannot resume the input pipeline exactly"
                )
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def resume(self, like: TrainState, data_iterator, num_train_steps: int) -> TrainState | None:
        """The latest checkpoint restored into `like` (and the iterator), or None without one.

        Logs which checkpoint the run resumes from, or that it starts from scratch.
        """
        latest = self.latest_step()
        if latest is None:
            logging.info("No checkpoint in %s: starting from scratch", self.directory)
            return None
        state = self.restore(latest, like, data_iterator)
        logging.info(
            "Resuming from checkpoint %s (step %d of %d)",
            os.path.join(self.directory, str(latest)),
            latest,
            num_train_steps,
        )
        return state

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def complete_steps(directory: str) -> list[int]:
    """Steps of the complete checkpoints in `directory` (orbax renames a step's directory into
    place when it is done); [] when there is none. Creates nothing."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def restore_checkpoint(directory: str, like: TrainState, step: int | None = None):
    """(state, step) of checkpoint `step` (default: the latest) in `directory`, no data state.

    FileNotFoundError names the directory and the steps it has when there is no such step.
    """
    steps = complete_steps(directory)
    if not steps:
        raise FileNotFoundError(f"{directory} has no checkpoints: train first (--mode train)")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(
            f"{directory} has no checkpoint for step {step}; it has steps {steps}"
        )
    ckpt = Checkpointer(directory, keep=len(steps))
    try:
        return ckpt.restore(step, like), step
    finally:
        ckpt.close()


class _Snapshot:
    """An iterator state frozen at save time, in the form grain's handler writes (JSON bytes)."""

    def __init__(self, state: dict):
        self._state = json.dumps(state, indent=4).encode()

    def get_state(self) -> bytes:
        return self._state
