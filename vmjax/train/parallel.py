"""How a train step is spread over devices: `mesh` (jit + NamedSharding, the default) or `pmap`.

Both take each process's local batch and run the same pure step (vmjax.train.step) on the global
batch, so for a given global batch they give the single-device update.

mesh: a `Mesh` of all devices with axes ('data', 'fsdp'). The batch is split over both axes;
  parameters and optimizer state are replicated, or with `config.mesh.fsdp = K > 1` each array
  is split along its largest dimension divisible by K over the 'fsdp' axis (ZeRO-3 style: XLA
  gathers a layer's parameters where they are used). The state is donated to the step.
pmap: the state is replicated on every local device with a leading device axis; each device
  takes its rows of the batch and gradients are summed across devices (`lax.psum`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vmjax.data.pipeline import device_part
from vmjax.train.step import eval_step, train_step

PARALLELISMS = ("mesh", "pmap")
BATCH_AXES = ("data", "fsdp")
# Arrays smaller than this stay replicated under fsdp: splitting biases and norms saves nothing.
FSDP_MIN_SIZE = 2**12


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
    """A ('data', 'fsdp') mesh over `devices` (default: all), `fsdp` devices per parameter shard."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    if fsdp < 1 or devices.size % fsdp:
        raise ValueError(
            f"config.mesh.fsdp={fsdp} must be >= 1 and divide the {devices.size} devices"
        )
    return Mesh(devices.reshape(devices.size // fsdp, fsdp), BATCH_AXES)


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Partition of one state array: its largest dimension divisible by `fsdp` goes to 'fsdp'."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % fsdp == 0:
            return P(*([None] * d + ["fsdp"]))
    return P()


@dataclasses.dataclass
class Parallel:
    """A step placement: put state and batches on devices, run train/eval steps on them.

    put_state: a host/one-device TrainState -> the state the steps take.
    checkpoint_view: that state -> what a checkpoint holds (the single-device layout).
    put_batch: this process's batch (numpy) -> the step's input.
    train_step: (state, batch[, max_loss]) -> (state, metrics of the global batch); max_loss
      matters with config.on_divergence='skip' (vmjax.train.step.train_step).
    eval_step: (state, batch) -> outputs for this process's evaluator: the global batch's
      scores, labels and weights, gathered from all processes.
    """

    kind: str
    put_state: Callable
    checkpoint_view: Callable
    put_batch: Callable
    train_step: Callable
    eval_step: Callable
    mesh: Mesh | None = None


def local_batch_size(global_batch: int, what: str = "batch_size") -> int:
    """This process's share of a global batch; it must split evenly over local devices."""
    n = jax.process_count()
    if global_batch % (n * jax.local_device_count()):
        raise ValueError(
            f"config.{what}={global_batch} must be divisible by the number of devices "
            f"({n} processes x {jax.local_device_count()} local devices)"
        )
    return global_batch // n


def create(config: ml_collections.ConfigDict, model, tx) -> Parallel:
    """The `config.parallelism` placement for `model` trained with `tx`."""
    step_kwargs = dict(
        model=model,
        tx=tx,
        dtype=config.dtype,
        grad_accum=config.grad_accum,
        skip_nonfinite=config.on_nonfinite_loss == "skip",
        skip_diverged=config.get("on_divergence") == "skip",
        augment=config.augment if "augment" in config else None,
    )
    if config.parallelism == "mesh":
        return _mesh(config, model, step_kwargs)
    if config.parallelism == "pmap":
        if config.mesh.fsdp != 1:
            raise ValueError("config.mesh.fsdp shards parameters only with parallelism='mesh'")
        return _pmap(config, model, step_kwargs)
    raise ValueError(f"config.parallelism={config.parallelism!r}; expected one of {PARALLELISMS}")


def _mesh(config, model, step_kwargs) -> Parallel:
    mesh = make_mesh(config.mesh.fsdp)
    batch_sharding = NamedSharding(mesh, P(BATCH_AXES))
    replicated = NamedSharding(mesh, P())

    def state_shardings(state):
        return jax.tree.map(
            lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), config.mesh.fsdp)), state
        )

    def put_state(state):
        return jax.device_put(state, state_shardings(state))

    def put_batch(batch):
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(batch_sharding, np.asarray(x)),
            device_part(batch),
        )

    # The new state keeps the input's shardings (None: as jit propagates them).
    train = jax.jit(
        functools.partial(train_step, **step_kwargs),
        out_shardings=(None, replicated),
        donate_argnums=0,
    )
    evaluate = jax.jit(
        functools.partial(eval_step, model=model, dtype=config.dtype), out_shardings=replicated
    )

    def run_eval(state, batch):
        return jax.device_get(evaluate(state, batch))

    return Parallel("mesh", put_state, lambda s: s, put_batch, train, run_eval, mesh)


def _pmap(config, model, step_kwargs) -> Parallel:
    devices = jax.local_devices()
    n = len(devices)

    stacked = NamedSharding(Mesh(np.asarray(devices), ("devices",)), P("devices"))

    def put_state(state):
        def replicate(x):
            x = jnp.asarray(x)
            shards = [jax.device_put(x[None], d) for d in devices]
            return jax.make_array_from_single_device_arrays((n, *x.shape), stacked, shards)

        return jax.tree.map(replicate, state)

    def checkpoint_view(state):
        # Host copies: every process holds the same replica, and orbax writes host arrays once.
        return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data[0]), state)

    def put_batch(batch):
        def split(x):
            x = np.asarray(x)
            return x.reshape(n, x.shape[0] // n, *x.shape[1:])

        return jax.tree.map(split, device_part(batch))

    train = jax.pmap(
        functools.partial(train_step, axis_name="devices", **step_kwargs),
        axis_name="devices",
        in_axes=(0, 0, None),  # max_loss: one number for every device
        donate_argnums=0,
    )
    evaluate = jax.pmap(functools.partial(eval_step, model=model, dtype=config.dtype))

    def run_train(state, batch, max_loss=float("inf")):
        state, metrics = train(state, batch, max_loss)
        return state, jax.tree.map(lambda x: x[0], metrics)

    def run_eval(state, batch):
        out = evaluate(state, batch)
        out = {k: np.asarray(v).reshape(-1, *v.shape[2:]) for k, v in out.items()}
        if jax.process_count() > 1:
            out["loss_sum"], out["count"] = out["loss_sum"].reshape(-1), out["count"].reshape(-1)
            out = multihost_utils.process_allgather(out, tiled=True)
        out["loss_sum"], out["count"] = out["loss_sum"].sum(), out["count"].sum()
        return out

    return Parallel("pmap", put_state, checkpoint_view, put_batch, run_train, run_eval)
