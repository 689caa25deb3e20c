"""Times one optimizer update (global-norm clip + AdamW) on a model's parameter shapes.

Usage: python benchmarks/optimizer.py [--config configs/yt8m.py:frame] [--reps 20] [--warmup 2]
       [--scale 1.0] [--weight_decay W] [--decay_matrices_only]

Three updates of the same random parameters and gradients (float32), each one
params, state <- update(params, state, grads):
  ours   vmjax.train.optimizer.clip_adamw, jitted, params and state donated;
  optax  optax.chain(clip_by_global_norm, adamw), jitted, params and state donated (what
         vmjax.train.state.make_optimizer built before clip_adamw);
  torch  torch.nn.utils.clip_grad_norm_(foreach=True) + torch.optim.AdamW(fused=True), in place
         (only when torch is importable).
The learning rate, clip norm and weight decay come from the config's `optimizer` block (the
schedule for JAX, its peak value as torch's constant). --decay_matrices_only decays parameters
of 2+ dimensions only (state.decay_mask; torch gets the same two parameter groups).
Each is run `--warmup` times (the first JAX call compiles), then the three are timed in turn,
`--reps` rounds, each call waited for (block_until_ready); the median and the minimum per
update are printed with ratios to torch. --scale shrinks every parameter's first dimension
(e.g. --scale 0.01 to check the script quickly; such timings mean nothing).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vmjax.data import pipeline
from vmjax.data.device import model_inputs
from vmjax.models import build_model
from vmjax.tools.configs import get_config
from vmjax.train import state as state_lib
from vmjax.train.optimizer import clip_adamw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parameter_shapes(config, scale: float) -> dict:
    """The model's parameter tree as ShapeDtypeStructs (nothing initialised), first dims scaled."""
    spec = pipeline.BatchSpec.from_config(config.data)
    model = build_model(config.model, spec.num_classes)
    inputs = jax.eval_shape(model_inputs, pipeline.device_part(pipeline.example_batch(spec)))
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), inputs)

    def scaled(x):
        shape = tuple(x.shape)
        if shape and scale != 1.0:
            shape = (max(1, round(shape[0] * scale)), *shape[1:])
        return jax.ShapeDtypeStruct(shape, jnp.float32)

    return jax.tree.map(scaled, variables["params"])


def _random_like(shapes: dict, seed: int, std: float) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (std * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def jax_update(tx: optax.GradientTransformation, params: dict, grads: dict) -> Callable[[], None]:
    """A call doing one donated, jitted update of its own copy of `params` and the state."""

    def step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    step = jax.jit(step, donate_argnums=(0, 1))
    carry = [jax.tree.map(jnp.array, params), None]
    carry[1] = jax.jit(tx.init)(carry[0])
    grads = jax.tree.map(jnp.asarray, grads)

    def call() -> None:
        carry[0], carry[1] = jax.block_until_ready(step(carry[0], carry[1], grads))

    return call


def torch_update(opt, clip_norm: float, lr: float, params, grads, decays) -> Callable | None:
    """A call doing clip_grad_norm_(foreach) + fused AdamW in place; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    leaves = [torch.tensor(np.asarray(p)) for p in jax.tree.leaves(params)]
    for leaf, g in zip(leaves, jax.tree.leaves(grads), strict=True):
        leaf.grad = torch.tensor(np.asarray(g))
    groups = [
        {
            "params": [p for p, d in zip(leaves, decays, strict=True) if d == want],
            "weight_decay": wd,
        }
        for want, wd in ((True, opt.weight_decay), (False, 0.0))
    ]
    adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, fused=True)

    def call() -> None:
        if clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(leaves, clip_norm, foreach=True)
        adamw.step()

    return call


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores usable, jax {jax.__version__} on {jax.devices()[0].device_kind}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs/yt8m.py") + ":frame")
    parser.add_argument("--reps", type=int, default=20, help="timed rounds (median, min)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each first")
    parser.add_argument("--scale", type=float, default=1.0, help="first-dimension scale")
    parser.add_argument("--weight_decay", type=float, default=None, help="default: config's")
    parser.add_argument("--decay_matrices_only", action="store_true")
    args = parser.parse_args()
    if args.reps < 1 or args.warmup < 1 or not 0 < args.scale <= 1:
        parser.error("--reps and --warmup must be >= 1 and --scale in (0, 1]")

    path, _, presets = args.config.partition(":")
    config = get_config(path, presets)
    opt = config.optimizer
    if args.weight_decay is not None:
        opt.weight_decay = args.weight_decay
    shapes = parameter_shapes(config, args.scale)
    params = _random_like(shapes, 0, 0.05)
    grads = _random_like(shapes, 1, 1e-3)
    schedule = state_lib.learning_rate_schedule(opt, config.num_train_steps)
    mask = state_lib.decay_mask if args.decay_matrices_only else None
    decays = jax.tree.leaves(
        state_lib.decay_mask(params) if mask else jax.tree.map(lambda _: True, params)
    )

    adam = optax.adamw(schedule, weight_decay=opt.weight_decay, mask=mask)
    reference = optax.chain(optax.clip_by_global_norm(opt.clip_norm), adam)
    if opt.clip_norm <= 0:
        reference = adam
    ours = clip_adamw(schedule, clip_norm=opt.clip_norm, weight_decay=opt.weight_decay, mask=mask)
    calls = {"ours": jax_update(ours, params, grads), "optax": jax_update(reference, params, grads)}
    torch_call = torch_update(opt, opt.clip_norm, opt.learning_rate, params, grads, decays)
    if torch_call is not None:
        calls["torch"] = torch_call

    for call in calls.values():
        for _ in range(args.warmup):
            call()
    seconds = {name: [] for name in calls}
    for _ in range(args.reps):  # in turn, so that load from other jobs hits all alike
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - t0)

    n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    print(f"machine: {machine()}")
    if torch_call is not None:
        import torch

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"config {args.config}: {n:,} float32 parameters in {len(decays)} arrays, "
        f"clip_norm {opt.clip_norm}, weight_decay {opt.weight_decay}, "
        f"decay_matrices_only {args.decay_matrices_only}, {args.reps} reps"
    )
    base = np.median(seconds["torch"]) if "torch" in seconds else None
    print(f"{'update':<8}{'median ms':>11}{'min ms':>9}{'vs torch':>10}")
    for name, s in seconds.items():
        ratio = f"{np.median(s) / base:.2f}x" if base else "n/a"
        print(f"{name:<8}{1e3 * np.median(s):>11.2f}{1e3 * min(s):>9.2f}{ratio:>10}")


if __name__ == "__main__":
    main()
