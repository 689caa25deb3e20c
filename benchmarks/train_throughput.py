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
the same way; the script says so. mfu is printed on GPU/TPU kinds in PEAK_FLOPS only.

Single process only. Progress goes to stderr; results go to stdout as `key value` lines.
"""

import functools
import re
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
from vmjax.models import build_model
from vmjax.train import parallel
from vmjax.train import state as state_lib
from vmjax.train.step import DTYPES, cast_floats, model_inputs

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

# Dense (no sparsity) peak FLOP/s of one JAX device: (name, device_kind regex, 16-bit tensor
# cores, TF32 tensor cores, float32 without tensor cores). The first match wins. Sources, the
# vendors' datasheets (NVIDIA quotes tensor-core figures with 2:4 sparsity; halved here):
#   H100 SXM / PCIe: https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
#   H200 (and GH200): https://www.nvidia.com/en-us/data-center/h200/ - same compute as H100 SXM
#   A100: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
#   V100: https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf
#     (fp16 tensor cores; Volta has no bf16 or TF32, so a bf16 run there does not reach this)
#   TPU: https://cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e ("peak compute per chip (bf16)";
#     one JAX device per chip on these). TPUs run float32 matmuls as bf16 passes by default.
# NVL boards (H100 NVL, H200 NVL) run at other clocks and are left out: mfu n/a there.
PEAK_FLOPS = (
    ("H100 PCIe", r"H100.*PCIe", 756e12, 378e12, 51e12),
    ("H100 SXM", r"H100(?!.*NVL)", 989e12, 494e12, 67e12),
    ("H200/GH200", r"H200(?!.*NVL)", 989e12, 494e12, 67e12),
    ("A100", r"A100", 312e12, 156e12, 19.5e12),
    ("V100 PCIe", r"V100.*PCIe", 112e12, None, 14e12),
    ("V100 SXM2", r"V100", 125e12, None, 15.7e12),
    ("TPU v4", r"^TPU v4$", 275e12, 275e12, 275e12),
    ("TPU v5e", r"^TPU v5( lite|e)", 197e12, 197e12, 197e12),
    ("TPU v5p", r"^TPU v5p?$", 459e12, 459e12, 459e12),
    ("TPU v6e", r"^TPU v6( lite|e)", 918e12, 918e12, 918e12),
)
# jax_default_matmul_precision values that keep float32 matmuls off TF32 tensor cores.
_FULL_FLOAT32 = ("float32", "highest", "F32_F32_F32")


def _log(message: str) -> None:
    print(f"train_throughput: {message}", file=sys.stderr, flush=True)


def peak_flops(device_kind: str, dtype: str, matmul_precision: str | None) -> tuple[float, str]:
    """Peak FLOP/s of one device for `dtype` compute, and what it is; raises KeyError if unknown.

    float32 on Ampere/Hopper counts against TF32: JAX's default precision runs float32 matmuls
    on TF32 tensor cores there, unless jax_default_matmul_precision asks for full float32.
    """
    for name, pattern, half, tf32, fp32 in PEAK_FLOPS:
        if re.search(pattern, device_kind, re.IGNORECASE):
            if dtype == "bfloat16" and tf32 is None:
                return half, f"{name} fp16 tensor cores (which bf16 cannot use on Volta)"
            if dtype == "bfloat16":
                return half, f"{name} 16-bit dense"
            if name.startswith("TPU"):
                return half, f"{name} bf16 (float32 matmuls run as bf16 passes)"
            if tf32 is None or str(matmul_precision) in _FULL_FLOAT32:
                return fp32, f"{name} float32 without tensor cores"
            return tf32, f"{name} TF32 dense (JAX's default float32 matmul precision)"
    raise KeyError(device_kind)


def random_batch(spec: pipeline.BatchSpec, batch_size: int, seed: int) -> dict:
    """A full batch of the pipeline's shapes and dtypes: every row, frame and token valid."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, x in pipeline.example_batch(spec, batch_size).items():
        if key == "labels":  # YT8M videos have ~3 labels each
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


def _flops_and_loops(compiled) -> tuple[float | None, bool]:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older JAX returned one dict per device
        cost = cost[0] if cost else None
    flops = cost.get("flops") if cost else None
    # XLA counts a while loop's body once, whatever its trip count.
    return (flops if flops and flops > 0 else None), " while(" in compiled.as_text()


def step_flops(config, model, tx, state, batch) -> tuple[float | None, bool]:
    """FLOPs of one train step on the global batch, from XLA's cost analysis; and any loops.

    The compiled, partitioned step is one device's program, so its count is multiplied by the
    device count; work every device repeats (the optimizer update of replicated parameters) is
    then counted once per device, which is small next to the model at useful batch sizes.
    """
    flat = config.copy_and_resolve_references()
    flat.grad_accum = 1  # same arithmetic; micro-batches would be a loop XLA counts once
    par = parallel.create(flat, model, tx)
    flops, loops = _flops_and_loops(jax.jit(par.train_step).lower(state, batch).compile())
    return (None if flops is None else flops * jax.device_count()), loops


def forward_flops(model, state, inputs, dtype: str) -> tuple[float | None, bool]:
    """FLOPs of the forward pass (train=False) on one device, from shapes only."""
    variables = jax.eval_shape(
        lambda s: {"params": cast_floats(s.params, DTYPES[dtype]), **s.model_state}, state
    )
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return _flops_and_loops(forward.lower(variables, inputs).compile())


def _seconds(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0, out


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
    spec = pipeline.BatchSpec.from_config(config.data)
    model = build_model(config.model, spec.num_classes)
    tx = state_lib.make_optimizer(config.optimizer, config.num_train_steps)
    par = parallel.create(config, model, tx)
    host_state = state_lib.create_train_state(
        model, tx, model_inputs(pipeline.example_batch(spec)), jax.random.PRNGKey(config.seed)
    )
    num_params = sum(x.size for x in jax.tree.leaves(host_state.params))
    host_batch = random_batch(spec, local_batch, config.seed)
    state = par.put_state(host_state)
    batch = put_batch_once(par, host_batch)

    _log(f"compiling and running {FLAGS.warmup} warmup step(s)")
    compile_s, (state, _) = _seconds(par.train_step, state, batch)
    for _ in range(FLAGS.warmup - 1):
        state, _ = par.train_step(state, batch)
    jax.block_until_ready(state)

    _log(f"timing {FLAGS.steps} steps back to back")
    t0 = time.perf_counter()
    for _ in range(FLAGS.steps):
        state, _ = par.train_step(state, batch)  # state is donated: always keep the new one
    jax.block_until_ready(state)
    total_s = time.perf_counter() - t0

    _log(f"timing {FLAGS.steps} steps one at a time")
    step_s = []
    for _ in range(FLAGS.steps):
        seconds, (state, _) = _seconds(par.train_step, state, batch)
        step_s.append(seconds)

    _log("counting FLOPs (compiles the step and the forward pass once more)")
    flops_step, step_loops = step_flops(config, model, tx, state, batch)
    inputs = jax.eval_shape(functools.partial(model_inputs, dtype=DTYPES[config.dtype]), host_batch)
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
        ("first_step_s", f"{compile_s:.2f}"),  # compile + one step
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
    if jax.default_backend() == "cpu":
        results.append(("mfu", "n/a (CPU has no peak FLOP/s table entry)"))
    else:
        try:
            peak, peak_what = peak_flops(
                device_kind, config.dtype, jax.config.jax_default_matmul_precision
            )
        except KeyError:
            results.append(("mfu", f"n/a (no peak FLOP/s for device kind {device_kind!r})"))
        else:
            results += [("peak_flops_per_device", f"{peak:.4g}"), ("peak_source", peak_what)]
            if flops_per_example is None:
                results.append(("mfu", "n/a (no FLOP count)"))
            else:
                results.append(("mfu", f"{flops_per_s / (n_devices * peak):.4f}"))
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        results.append(("device0_peak_memory_gib", f"{stats['peak_bytes_in_use'] / 2**30:.2f}"))
    for key, value in results:
        print(f"{key} {value}")


if __name__ == "__main__":
    app.run(main)
