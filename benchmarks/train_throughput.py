"""Training throughput of vmjax's train step on this JAX backend: examples/s, step time, MFU.

  python benchmarks/train_throughput.py --config configs/yt8m.py:frame_moe \\
      --config.batch_size=64 --steps 20
  python benchmarks/train_throughput.py --config configs/yt8m.py:vivit --config.dtype=bfloat16

The step is the trainer's (vmjax.train.loop): `build_model`, `make_optimizer`,
`create_train_state` and the `vmjax.train.parallel` placement, so config.parallelism,
config.mesh.fsdp, config.dtype, config.grad_accum and config.on_nonfinite_loss all apply. One
random batch of the pipeline's shapes (every row weighted 1, every frame and text token valid) is
put on the devices once and reused: this times the step, not the input pipeline.

Timing: `--warmup` steps (the first compiles), then `--steps` steps twice: dispatched back to back
with one wait at the end, as the trainer runs them (-> examples_per_s, mfu), and one at a time,
waiting for each (-> step_ms, the median, which load from other jobs disturbs less).

FLOPs per example: XLA's cost analysis of the compiled train step (forward, backward and
optimizer update), counted with grad_accum=1 because XLA counts a loop body once; 3x the forward
pass is printed beside it as a cross-check. A model with a loop over time (lstm) is undercounted
the same way; the script says so. mfu is printed on GPU/TPU kinds in
vmjax.tools.flops.PEAK_FLOPS only.

Single process only. Progress goes to stderr; results go to stdout as `key value` lines.
"""

import functools
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from vmjax.data import pipeline
from vmjax.data.device import DTYPES, model_inputs
from vmjax.models import build_model
from vmjax.tools.flops import forward_flops, peak_flops, step_flops
from vmjax.train import parallel
from vmjax.train import state as state_lib

config_flags.DEFINE_config_file(
    "config",
    None,
    "A config file with get_config(arg), optionally followed by :PRESETS (e.g. "
    "configs/yt8m.py:vivit). Any field can be overridden with --config.FIELD=VALUE, "
    "e.g. --config.batch_size=64 or --config.dtype=bfloat16.",
    lock_config=True,
)
flags.DEFINE_integer("steps", 20, "Timed steps (run twice: back to back, then one at a time).")
flags.DEFINE_integer("warmup", 2, "Untimed steps first; the first one compiles the step.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def _log(message: str) -> None:
    print(f"train_throughput: {message}", file=sys.stderr, flush=True)


def random_batch(spec: pipeline.BatchSpec, batch_size: int, seed: int) -> dict:
    """A full batch of the pipeline's shapes and dtypes: every row, frame and token valid."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, x in pipeline.example_batch(spec, batch_size).items():
        if key == "ids":  # host-only strings
            out[key] = x
        elif key == "labels":  # YT8M videos have ~3 labels each
            out[key] = (rng.random(x.shape) < 3 / spec.num_classes).astype(x.dtype)
        elif key == "weights" or key.endswith("mask"):
            out[key] = np.ones_like(x)
        elif key == "num_frames":
            out[key] = np.full_like(x, spec.max_frames)
        elif key == "text_tokens":
            out[key] = rng.integers(0, spec.text_vocab_size, x.shape).astype(x.dtype)
        elif x.dtype == np.uint8:  # quantized frame features
            out[key] = rng.integers(0, 256, x.shape, dtype=np.uint8)
        else:  # video-level mean features
            out[key] = rng.normal(0, 1, x.shape).astype(x.dtype)
    return out


def put_batch_once(par: parallel.Parallel, batch: dict) -> dict:
    """The batch on the devices as the step takes it (pmap's put_batch leaves it on the host)."""
    placed = par.put_batch(batch)
    if par.kind == "pmap":
        devices = np.asarray(jax.local_devices())
        placed = jax.device_put(placed, NamedSharding(Mesh(devices, ("devices",)), P("devices")))
    return placed


def build_step(config):
    """(spec, model, optimizer, Parallel, host state): the trainer's step as vmjax.train.loop
    builds it (`par.train_step`)."""
    spec = pipeline.BatchSpec.from_config(config.data)
    model = build_model(config.model, spec.num_classes)
    tx = state_lib.make_optimizer(config.optimizer, config.num_train_steps)
    par = parallel.create(config, model, tx)
    host_state = state_lib.create_train_state(
        model, tx, model_inputs(pipeline.example_batch(spec)), jax.random.PRNGKey(config.seed)
    )
    return spec, model, tx, par, host_state


def _seconds(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0, out


def time_steps(train_step, state, batch, warmup: int, steps: int):
    """(state, first step's seconds, seconds of `steps` back to back, each of `steps` steps).

    The state is donated to every step: always carry the new one.
    """
    _log(f"compiling and running {warmup} warmup step(s)")
    first_s, (state, _) = _seconds(train_step, state, batch)
    for _ in range(warmup - 1):
        state, _ = train_step(state, batch)
    jax.block_until_ready(state)

    _log(f"timing {steps} steps back to back")
    t0 = time.perf_counter()
    for _ in range(steps):
        state, _ = train_step(state, batch)
    jax.block_until_ready(state)
    total_s = time.perf_counter() - t0

    _log(f"timing {steps} steps one at a time")
    each_s = []
    for _ in range(steps):
        seconds, (state, _) = _seconds(train_step, state, batch)
        each_s.append(seconds)
    return state, first_s, total_s, each_s


def mfu_results(device_kind: str, dtype: str, flops_per_s: float | None) -> list[tuple]:
    """`mfu` (and the peak it divides by) for one device of `device_kind`, or why there is none."""
    if jax.default_backend() == "cpu":
        return [("mfu", "n/a (CPU has no peak FLOP/s table entry)")]
    try:
        peak, what = peak_flops(device_kind, dtype, jax.config.jax_default_matmul_precision)
    except KeyError:
        return [("mfu", f"n/a (no peak FLOP/s for device kind {device_kind!r})")]
    out = [("peak_flops_per_device", f"{peak:.4g}"), ("peak_source", what)]
    if flops_per_s is None:
        return out + [("mfu", "n/a (no FLOP count)")]
    return out + [("mfu", f"{flops_per_s / (jax.device_count() * peak):.4f}")]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.steps < 1 or FLAGS.warmup < 1:
        raise app.UsageError("--steps and --warmup must be >= 1 (the first warmup step compiles)")
    config = FLAGS.config
    n_devices = jax.device_count()
    local_batch = parallel.local_batch_size(config.batch_size)
    per_device = local_batch // jax.local_device_count()
    if config.grad_accum < 1 or per_device % config.grad_accum:
        raise ValueError(
            f"config.grad_accum={config.grad_accum} must divide the per-device batch "
            f"({per_device} = batch_size {config.batch_size} / {n_devices} devices)"
        )

    _log(f"building {config.model.name} ({config.data.level} level) on {n_devices} device(s)")
    spec, model, tx, par, host_state = build_step(config)
    num_params = sum(x.size for x in jax.tree.leaves(host_state.params))
    host_batch = random_batch(spec, local_batch, config.seed)
    state = par.put_state(host_state)
    batch = put_batch_once(par, host_batch)

    state, first_s, total_s, step_s = time_steps(
        par.train_step, state, batch, FLAGS.warmup, FLAGS.steps
    )

    _log("counting FLOPs (compiles the step and the forward pass once more)")
    flops_step, step_loops = step_flops(config, model, tx, state, batch)
    inputs = jax.eval_shape(
        functools.partial(model_inputs, dtype=DTYPES[config.dtype]),
        pipeline.device_part(host_batch),
    )
    flops_forward, forward_loops = forward_flops(model, host_state, inputs, config.dtype)

    examples_per_s = FLAGS.steps * config.batch_size / total_s
    device_kind = jax.devices()[0].device_kind
    results = [
        ("backend", jax.default_backend()),
        ("device_kind", device_kind),
        ("device_count", n_devices),
        ("model", config.model.name),
        ("data_level", config.data.level),
        ("params", num_params),
        ("dtype", config.dtype),
        ("parallelism", config.parallelism),
        ("mesh_fsdp", config.mesh.fsdp),
        ("grad_accum", config.grad_accum),
        ("batch_size", config.batch_size),
        ("batch_size_per_device", config.batch_size // n_devices),
    ]
    if config.data.level == "frame":
        results.append(("max_frames", config.data.max_frames))
    results += [
        ("steps", FLAGS.steps),
        ("warmup", FLAGS.warmup),
        ("first_step_s", f"{first_s:.2f}"),  # compile + one step
        ("examples_per_s", f"{examples_per_s:.2f}"),
        ("examples_per_s_per_device", f"{examples_per_s / n_devices:.2f}"),
        ("step_ms", f"{1e3 * statistics.median(step_s):.3f}"),
        ("step_ms_min", f"{1e3 * min(step_s):.3f}"),
        ("step_ms_max", f"{1e3 * max(step_s):.3f}"),
        ("step_ms_back_to_back", f"{1e3 * total_s / FLAGS.steps:.3f}"),
    ]
    if flops_forward is not None:
        results.append(("flops_per_example_3x_forward", f"{3 * flops_forward / local_batch:.6g}"))
    if flops_step is not None:
        flops_per_example, source = flops_step / config.batch_size, "xla_train_step"
    elif flops_forward is not None:
        flops_per_example, source = 3 * flops_forward / local_batch, "3x_forward"
    else:
        flops_per_example, source = None, "none (XLA gave no cost analysis)"
    results.append(("flops_source", source))
    flops_per_s = None
    if flops_per_example is not None:
        flops_per_s = flops_per_example * examples_per_s
        results += [
            ("flops_per_example", f"{flops_per_example:.6g}"),
            ("flops_per_s", f"{flops_per_s:.6g}"),
            ("flops_per_s_per_device", f"{flops_per_s / n_devices:.6g}"),
        ]
    if step_loops or forward_loops:
        note = "the step has loops XLA counts once (e.g. over time): flops and mfu are lower bounds"
        results.append(("flops_note", note))
    results += mfu_results(device_kind, config.dtype, flops_per_s)
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        results.append(("device0_peak_memory_gib", f"{stats['peak_bytes_in_use'] / 2**30:.2f}"))
    for key, value in results:
        print(f"{key} {value}")


if __name__ == "__main__":
    app.run(main)
