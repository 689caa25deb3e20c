"""Runs in a subprocess with 8 fake CPU devices (see tests/models/test_retrieval.py).

Computes the InfoNCE loss of one global batch and its gradients (w.r.t. a projection, the
log scale and the input features) on one device, and with the batch split over devices:
`jax.shard_map` with the grad taken outside or inside it, a ('data', 'fsdp') mesh gathering
over both axes, and `jax.pmap` with the per-device gradients averaged; and a batch with
padding rows (weight 0, one device holding only padding) on one device and under shard_map.
Prints one JSON line.
"""

import functools
import json

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vmjax.models.retrieval import infonce_loss, l2_normalize

DEVICES, LOCAL, FEATURES, DIM = 8, 3, 12, 6
GLOBAL = DEVICES * LOCAL


def batch():
    rng = np.random.default_rng(0)
    return {
        "video_features": rng.normal(size=(GLOBAL, FEATURES)).astype(np.float32),
        "text_features": rng.normal(size=(GLOBAL, FEATURES)).astype(np.float32),
    }


PADDING_ROWS = (2, 9, 10, 11, 23)  # device 3 holds rows 9-11: padding only


def weighted_batch():
    weights = np.ones(GLOBAL, np.float32)
    weights[list(PADDING_ROWS)] = 0.0
    return {**batch(), "weights": weights}


def params():
    rng = np.random.default_rng(1)
    return {
        "video_w": rng.normal(size=(FEATURES, DIM)).astype(np.float32),
        "text_w": rng.normal(size=(FEATURES, DIM)).astype(np.float32),
        # log(20): a scale that makes the softmax far from uniform.
        "log_scale": np.float32(np.log(20.0)),
    }


def loss_fn(params, batch, axis_name=None):
    video = l2_normalize(batch["video_features"] @ params["video_w"])
    text = l2_normalize(batch["text_features"] @ params["text_w"])
    return infonce_loss(video, text, params["log_scale"], axis_name, batch.get("weights"))


def host(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64).tolist(), tree)


def reference(b=None):
    b = batch() if b is None else b
    loss, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(params(), b)
    return loss, grads


def local_only_loss():
    """Each device contrasting only its own rows: what a missing all-gather would give."""
    b = batch()
    losses = [
        loss_fn(params(), jax.tree.map(lambda x, d=d: x[d * LOCAL : (d + 1) * LOCAL], b))
        for d in range(DEVICES)
    ]
    return float(np.mean(losses))


def shard_map_outside(mesh, axes, b=None):
    spec = P(axes)
    f = jax.shard_map(
        functools.partial(loss_fn, axis_name=axes),
        mesh=mesh,
        in_specs=(P(), spec),
        out_specs=P(),
    )
    b = jax.device_put(batch() if b is None else b, NamedSharding(mesh, spec))
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params(), b)


def shard_map_inside(mesh):
    def step(params, batch):
        loss, (grads, batch_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
            params, batch, "data"
        )
        return loss, grads, batch_grads

    f = jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P(), P("data")))
    b = jax.device_put(batch(), NamedSharding(mesh, P("data")))
    loss, grads, batch_grads = jax.jit(f)(params(), b)
    return loss, (grads, batch_grads)


def pmapped():
    def step(params, batch):
        loss, (grads, batch_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
            params, batch, "data"
        )
        # pmap has no varying-axes types: each device differentiates the averaged loss as its
        # own, so the all-gather's reduce-scatter sums all devices' cotangents: every gradient
        # is `DEVICES` times too large once summed. Parameters: average the per-device parts.
        # Rows: divide by the axis size.
        batch_grads = jax.tree.map(lambda g: g / jax.lax.axis_size("data"), batch_grads)
        return loss, jax.lax.pmean(grads, "data"), batch_grads

    b = jax.tree.map(lambda x: x.reshape(DEVICES, LOCAL, *x.shape[1:]), batch())
    loss, grads, batch_grads = jax.pmap(step, axis_name="data", in_axes=(None, 0))(params(), b)
    batch_grads = jax.tree.map(lambda x: x.reshape(GLOBAL, *x.shape[2:]), batch_grads)
    return loss[0], (jax.tree.map(lambda x: x[0], grads), batch_grads)


def main():
    assert jax.device_count() == DEVICES, jax.devices()
    devices = np.asarray(jax.devices())
    mesh = Mesh(devices, ("data",))
    mesh_2d = Mesh(devices.reshape(4, 2), ("data", "fsdp"))
    want_loss, want_grads = reference()
    report = {"loss": float(want_loss), "grads": host(want_grads), "local_only": local_only_loss()}
    runs = {
        "shard_map_outside": lambda: shard_map_outside(mesh, "data"),
        "shard_map_inside": lambda: shard_map_inside(mesh),
        "shard_map_2d": lambda: shard_map_outside(mesh_2d, ("data", "fsdp")),
        "pmap": pmapped,
    }
    for name, run in runs.items():
        loss, grads = run()
        report[name] = {"loss": float(np.asarray(loss)), "grads": host(grads)}
    for name, run in {
        "weighted_reference": lambda: reference(weighted_batch()),
        "weighted_shard_map": lambda: shard_map_outside(mesh, "data", weighted_batch()),
    }.items():
        loss, grads = run()
        report[name] = {"loss": float(np.asarray(loss)), "grads": host(grads)}
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
