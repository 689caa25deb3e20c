"""orbax checkpoints of the train state together with the data iterator state, verified.

The only module that builds an orbax CheckpointManager; vmjax.run decides where checkpoints
live and who may open them.

Each complete checkpoint `<step>/` gets a manifest (`vmjax_manifest.json`: the size and CRC32C
of every file orbax wrote) once orbax has finished writing it. Restoring checks the manifest
first, then that orbax can read it and that every parameter is finite; a checkpoint that fails
is moved to `../checkpoints_rejected/` with the reason and the next older one is tried. So a
truncated file, a missing file, a flipped bit or a save cut short (no manifest yet) costs the
steps since the previous checkpoint, never the run.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import crc32c
import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from vmjax.errors import RunDirectoryError

MANIFEST = "vmjax_manifest.json"
REJECTED = "checkpoints_rejected"  # beside the checkpoint directory (vmjax.run.REJECTED)
_CHUNK = 1 << 22


class Checkpointer:
    """Saves (asynchronously) and restores {state, data iterator state} by step.

    orbax writes each step into a temporary directory and renames it when complete, so a crash
    never leaves a half-written checkpoint that looks valid. Every process calls save/restore:
    orbax writes the (possibly sharded) state once, and grain's handler writes each process's
    iterator state to `data/process_<i>-of-<n>.json`. Process 0 writes the manifests.
    """

    def __init__(self, directory: str, keep: int):
        check_keep(keep)
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.keep = keep
        self._manager = None

    @property
    def manager(self) -> ocp.CheckpointManager:
        # Built lazily: `resume` first moves rejected checkpoints out of orbax's sight.
        if self._manager is None:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=self.keep, create=True, enable_async_checkpointing=True
                ),
            )
        return self._manager

    def latest_step(self) -> int | None:
        """The newest complete checkpoint with a manifest (after pending saves finish)."""
        if self._manager is not None:
            self.wait()
        verified = [s for s in complete_steps(self.directory) if self._has_manifest(s)]
        return verified[-1] if verified else None

    def save(self, step: int, state, data_iterator=None) -> None:
        """Saves `state` (and the iterator's position) as checkpoint `step`, in the background.

        FloatingPointError, and nothing saved, when a parameter is NaN/Inf.
        """
        if not all_finite(state.params):
            raise FloatingPointError(
                f"parameters at step {step} are NaN/Inf; not saving them "
                f"(last good checkpoint: {self.latest_step()})"
            )
        self.wait()  # the previous save is complete: give it its manifest
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            # Snapshot now: the iterator moves on while orbax finishes the save in the background.
            items["data"] = grain.checkpoint.CheckpointSave(_Snapshot(data_iterator.get_state()))
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, like, data_iterator=None, *, partial: bool = False):
        """Restores `step` into the structure, shapes and shardings of `like` (unverified).

        With `data_iterator`, also sets it to the saved position (in place). partial: `like`
        is a dict naming part of the saved state (e.g. {'params', 'model_state', 'step'} for
        inference): only that is read.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        if partial:
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
            state_args = ocp.args.PyTreeRestore(
                item=abstract, restore_args=restore_args, partial_restore=True
            )
        else:
            state_args = ocp.args.StandardRestore(abstract)
        items = {"state": state_args}
        has_data = os.path.isdir(os.path.join(self.directory, str(step), "data"))
        # Step 0 without data/ (a run converted from transformers weights): nothing has been
        # read yet, so the fresh iterator already is the saved position.
        if data_iterator is not None and (has_data or step != 0):
            if not has_data:
                raise FileNotFoundError(
                    f"checkpoint {os.path.join(self.directory, str(step))} has no data iterator "
                    "state (data/); it cannot resume the input pipeline exactly"
                )
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def restore_verified(
        self, like, data_iterator=None, step: int | None = None, *, partial: bool = False
    ):
        """(state, step) of the newest good checkpoint (or exactly `step`); None without any.

        A checkpoint is good when its manifest matches its files, orbax reads it and its
        parameters are finite. Bad ones get one warning each naming why and are moved aside
        (only when looking for the newest); if every checkpoint is bad, RunDirectoryError
        names each and why.
        """
        steps = complete_steps(self.directory)
        if step is not None:
            if step not in steps:
                raise RunDirectoryError(
                    f"{self.directory} has no checkpoint for step {step}; it has steps {steps}"
                )
            steps = [step]
        problems = []
        for s in reversed(steps):
            path = os.path.join(self.directory, str(s))
            why = verify(path)
            state = None
            if why is None:
                try:
                    state = self.restore(s, like, data_iterator, partial=partial)
                except Exception as e:  # orbax/tensorstore raise many kinds on damaged files
                    why = f"orbax cannot read it ({type(e).__name__}: {_first_line(e)})"
            if why is None and partial:
                missing = [
                    jax.tree_util.keystr(path)
                    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
                    if isinstance(x, jax.ShapeDtypeStruct)
                ]
                if missing:  # orbax's partial restore hands back what the checkpoint lacks
                    why = f"it has no {', '.join(missing[:3])} (another model's checkpoint?)"
            if why is None and not all_finite(
                state["params"] if isinstance(state, dict) else state.params
            ):
                why = "its parameters hold NaN/Inf"
            if why is None:
                return state, s
            problems.append(f"{path}: {why}")
            if step is None:
                moved = self._reject(s, why)
                logging.warning("Skipping checkpoint %s: %s; moved to %s", path, why, moved)
            else:
                logging.warning("Checkpoint %s is bad: %s", path, why)
        if problems:
            raise RunDirectoryError(
                "no good checkpoint: "
                + "; ".join(problems[:3])
                + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            )
        return None

    def resume(self, like, data_iterator, num_train_steps: int):
        """The newest good checkpoint restored into `like` (and the iterator), or None.

        Logs which checkpoint the run resumes from, or that it starts from scratch.
        """
        found = self.restore_verified(like, data_iterator)
        if found is None:
            logging.info("No checkpoint in %s: starting from scratch", self.directory)
            return None
        state, step = found
        logging.info(
            "Resuming from checkpoint %s (step %d of %d)",
            os.path.join(self.directory, str(step)),
            step,
            num_train_steps,
        )
        return state

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk, then writes their manifests."""
        if self._manager is None:
            return
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            for s in complete_steps(self.directory):
                if not self._has_manifest(s):
                    write_manifest(os.path.join(self.directory, str(s)))

    def close(self) -> None:
        if self._manager is not None:
            self.wait()
            self._manager.close()
            self._manager = None

    def _has_manifest(self, step: int) -> bool:
        return os.path.isfile(os.path.join(self.directory, str(step), MANIFEST))

    def _reject(self, step: int, why: str) -> str:
        """Moves a bad checkpoint out of orbax's directory (it would list it as a step)."""
        if self._manager is not None:
            self._manager.close()  # it caches the steps it saw
            self._manager = None
        target_root = os.path.join(os.path.dirname(self.directory), REJECTED)
        os.makedirs(target_root, exist_ok=True)
        target = os.path.join(target_root, f"{step}-{int(time.time())}")
        if jax.process_index() == 0:
            shutil.move(os.path.join(self.directory, str(step)), target)
            with open(target + ".why", "w") as f:
                f.write(why + "\n")
        return target


def check_keep(keep: int) -> None:
    """RunDirectoryError unless keep (config.keep_checkpoints) is >= 1."""
    if keep < 1:
        raise RunDirectoryError(
            f"config.keep_checkpoints={keep}; expected >= 1 (how many of the newest "
            "checkpoints to keep; a run needs at least one to resume)"
        )


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


def _files(directory: str) -> list[str]:
    out = []
    for root, _, names in os.walk(directory):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), directory)
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def _crc(path: str) -> int:
    value = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            value = crc32c.crc32c(chunk, value)
    return value


def write_manifest(directory: str) -> None:
    """`directory/vmjax_manifest.json`: every file's size and CRC32C, written atomically."""
    files = {
        rel: [os.path.getsize(os.path.join(directory, rel)), _crc(os.path.join(directory, rel))]
        for rel in _files(directory)
    }
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"files": files}, f)
    os.replace(tmp, os.path.join(directory, MANIFEST))


def verify(directory: str) -> str | None:
    """Why the checkpoint in `directory` does not match its manifest; None when it does."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return "no manifest (its save did not finish)"
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    for rel, (size, crc) in files.items():
        full = os.path.join(directory, rel)
        if not os.path.isfile(full):
            return f"file {rel} is missing"
        if os.path.getsize(full) != size:
            return f"file {rel} has {os.path.getsize(full)} bytes, {size} written"
        if _crc(full) != crc:
            return f"file {rel} fails its checksum (corrupted)"
    return None


@jax.jit
def _finite(leaves):
    flags = [jnp.all(jnp.isfinite(x)) for x in leaves]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def all_finite(tree) -> bool:
    """Whether every floating-point leaf of `tree` is finite (one device reduction)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return bool(np.asarray(_finite(leaves)))


def complete_steps(directory: str) -> list[int]:
    """Steps of the complete checkpoints in `directory` (orbax renames a step's directory into
    place when it is done); [] when there is none. Creates nothing."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def restore_checkpoint(directory: str, like, step: int | None = None, *, partial: bool = False):
    """(state, step) of checkpoint `step` (default: the newest good one), no data state.

    Read only: a bad checkpoint is skipped with a warning, not moved. partial: see
    Checkpointer.restore. RunDirectoryError names the directory and its steps when there is no
    such step, or each checkpoint and why when none is good.
    """
    steps = complete_steps(directory)
    if not steps:
        raise RunDirectoryError(f"{directory} has no checkpoints: train first (--mode train)")
    ckpt = Checkpointer(directory, keep=len(steps))
    try:
        if step is not None:
            return ckpt.restore_verified(like, step=step, partial=partial)
        problems = []
        for s in reversed(steps):
            try:
                return ckpt.restore_verified(like, step=s, partial=partial)
            except RunDirectoryError as e:
                problems.append(str(e).removeprefix("no good checkpoint: "))
        raise RunDirectoryError("no good checkpoint: " + "; ".join(problems))
    finally:
        ckpt.close()


class _Snapshot:
    """An iterator state frozen at save time, in the form grain's handler writes (JSON bytes)."""

    def __init__(self, state: dict):
        self._state = json.dumps(state, indent=4).encode()

    def get_state(self) -> bytes:
        return self._state
