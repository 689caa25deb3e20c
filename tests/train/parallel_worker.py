"""Runs in a subprocess with 8 fake CPU devices (see test_parallel.py); prints one JSON line.

Trains a few steps of the same model on the same global batches with every placement and step
option, and reports each run's largest parameter difference from plain single-device `jax.jit`.
"""

import functools
import json

import jax
import ml_collections
import numpy as np

from tests.train import test_step
from vmjax.train import parallel
from vmjax.train.step import train_step

NUM_CLASSES, BATCH, STEPS = 12, 32, 3


def _config(**overrides):
    c = ml_collections.ConfigDict(
        {
            "parallelism": "mesh",
            "mesh": {"fsdp": 1},
            "dtype": "float32",
            "grad_accum": 1,
            "on_nonfinite_loss": "stop",
        }
    )
    c.update(overrides)
    return c


def _setup():
    return test_step._setup("moe", NUM_CLASSES, learning_rate=0.01)


def _batches():
    rng = np.random.default_rng(0)
    out = []
    for _ in range(STEPS):
        labels = (rng.random((BATCH, NUM_CLASSES)) < 0.2).astype(np.uint8)
        rgb = rng.integers(0, 256, (BATCH, 1024), dtype=np.uint8)
        out.append(
            {
                "rgb": rgb,
                "audio": rng.integers(0, 256, (BATCH, 128), dtype=np.uint8),
                "labels": labels,
                "weights": (rng.random(BATCH) < 0.9).astype(np.float32),
            }
        )
    return out


def _host(tree):
    return jax.tree.map(np.asarray, tree)


def reference():
    model, tx, state = _setup()
    step = jax.jit(functools.partial(train_step, model=model, tx=tx))
    losses = []
    for batch in _batches():
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return _host(state.params), losses


def placed(**overrides):
    model, tx, state = _setup()
    par = parallel.create(_config(**overrides), model, tx)
    state = par.put_state(state)
    losses = []
    for batch in _batches():
        state, metrics = par.train_step(state, par.put_batch(batch))
        losses.append(float(metrics["loss"]))
    sharded = sorted(
        {str(x.sharding.spec) for x in jax.tree.leaves(state.params) if hasattr(x.sharding, "spec")}
    )
    view = par.checkpoint_view(state)
    return _host(view.params), losses, sharded, int(np.asarray(view.step))


def main():
    assert jax.device_count() == 8, jax.devices()
    want, want_losses = reference()
    report = {"reference_losses": want_losses}
    runs = {
        "mesh": {},
        "mesh_fsdp2": {"mesh": {"fsdp": 2}},
        "mesh_fsdp8": {"mesh": {"fsdp": 8}},
        "pmap": {"parallelism": "pmap"},
        "mesh_accum4": {"grad_accum": 4},
        "pmap_accum2": {"parallelism": "pmap", "grad_accum": 2},
        "mesh_bf16": {"dtype": "bfloat16"},
    }
    for name, overrides in runs.items():
        params, losses, specs, step = placed(**overrides)
        diff = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True)
        )
        dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(params)})
        report[name] = {
            "max_param_diff": diff,
            "losses": losses,
            "specs": specs,
            "step": step,
            "param_dtypes": dtypes,
        }
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
