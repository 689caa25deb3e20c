"""Checkpoints are verified on restore: damaged ones are skipped with a warning, never loaded."""

import logging
import os

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vmjax.errors import RunDirectoryError
from vmjax.train import checkpoint
from vmjax.train.state import TrainState


def _state(value: float) -> TrainState:
    return TrainState(
        step=jnp.asarray(int(value), jnp.int32),
        params={"w": jnp.full((64, 32), value, jnp.float32), "b": jnp.arange(32.0) + value},
        opt_state={"mu": jnp.zeros((64, 32))},
        model_state={},
        rng=jnp.zeros((2,), jnp.uint32),
    )


def _save_three(directory) -> checkpoint.Checkpointer:
    ckpt = checkpoint.Checkpointer(str(directory), keep=5)
    for step in (1, 2, 3):
        ckpt.save(step, _state(float(step)))
    ckpt.close()
    return checkpoint.Checkpointer(str(directory), keep=5)


def _largest_array_file(step_dir) -> str:
    files = [os.path.join(r, n) for r, _, ns in os.walk(step_dir / "state") for n in ns]
    return max(files, key=os.path.getsize)


def _truncate(step_dir):
    path = _largest_array_file(step_dir)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _remove_file(step_dir):
    os.remove(_largest_array_file(step_dir))


def _flip_bit(step_dir):
    path = _largest_array_file(step_dir)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(path, "wb").write(bytes(data))


def _no_manifest(step_dir):  # the save was cut short after orbax's rename
    os.remove(step_dir / checkpoint.MANIFEST)


def _bad_metadata(step_dir):
    (step_dir / "state" / "_METADATA").write_text("{not json")
    checkpoint.write_manifest(str(step_dir))  # the damage is in what orbax reads, not the sums


@pytest.mark.parametrize(
    "damage, why",
    [
        (_truncate, "bytes"),
        (_remove_file, "missing"),
        (_flip_bit, "checksum"),
        (_no_manifest, "no manifest"),
        (_bad_metadata, "orbax cannot read it"),
    ],
)
def test_a_damaged_latest_checkpoint_is_skipped_and_the_one_before_restored(
    tmp_path, caplog, damage, why
):
    directory = tmp_path / "checkpoints"
    ckpt = _save_three(directory)
    damage(directory / "3")
    caplog.set_level(logging.WARNING)
    state, step = ckpt.restore_verified(_state(0.0))
    ckpt.close()
    assert step == 2
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.full((64, 32), 2.0))
    warnings = [r.getMessage() for r in caplog.records if "Skipping checkpoint" in r.getMessage()]
    assert len(warnings) == 1 and str(directory / "3") in warnings[0] and why in warnings[0]
    # Moved aside with the reason, so orbax never lists it again.
    assert checkpoint.complete_steps(str(directory)) == [1, 2]
    rejected = tmp_path / checkpoint.REJECTED
    assert any(n.startswith("3-") and n.endswith(".why") for n in os.listdir(rejected))


def test_nan_parameters_are_never_saved(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path / "c"), keep=2)
    ckpt.save(1, _state(1.0))
    bad = _state(2.0)
    bad = bad.replace(params={**bad.params, "b": bad.params["b"].at[3].set(jnp.nan)})
    with pytest.raises(FloatingPointError, match="NaN/Inf; not saving them"):
        ckpt.save(2, bad)
    ckpt.close()
    assert checkpoint.complete_steps(str(tmp_path / "c")) == [1]


def test_a_checkpoint_holding_nan_is_not_last_good(tmp_path):
    directory = tmp_path / "c"
    ckpt = _save_three(directory)
    # Written behind the guard's back (as an older vmjax could): orbax directly, then a manifest.
    nan_state = _state(4.0)
    nan_state = nan_state.replace(params={**nan_state.params, "w": nan_state.params["w"] * jnp.nan})
    ckpt.manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(nan_state)))
    ckpt.wait()
    state, step = ckpt.restore_verified(_state(0.0))
    ckpt.close()
    assert step == 3


def test_no_good_checkpoint_is_an_error_naming_each(tmp_path):
    directory = tmp_path / "c"
    ckpt = _save_three(directory)
    for step in (1, 2, 3):
        _flip_bit(directory / str(step))
    with pytest.raises(RunDirectoryError) as e:
        ckpt.restore_verified(_state(0.0))
    ckpt.close()
    for step in (1, 2, 3):
        assert str(directory / str(step)) in str(e.value)


def test_keep_checkpoints_below_one_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirectoryError, match="keep_checkpoints=0; expected >= 1"):
        checkpoint.Checkpointer(str(tmp_path / "c"), keep=0)
