"""orbax checkpoints of the train state together with the data iterator state."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from vmjax.train.state import TrainState


class Checkpointer:
    """Saves (asynchronously) and restores {state, data iterator state} by step.

    orbax writes each step into a temporary directory and renames it when
    complete, so a crash never leaves a half-written checkpoint that looks valid.
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

    def save(self, step: int, state: TrainState, data_state: dict | None) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict | None]:
        """Restores `step` into the structure, shapes and shardings of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        items = {"state": ocp.args.StandardRestore(abstract)}
        has_data = os.path.isdir(os.path.join(self.directory, str(step), "data"))
        if has_data:
            items["data"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], (restored["data"] if has_data else None)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
