"""N seeds of one config: one vmapped program (vmjax.train.seeds) against N single runs.

  python benchmarks/vmap_seeds.py                        # moe and frame, N = 1, 3, 5
  python benchmarks/vmap_seeds.py --models moe --seeds 1,4 --steps 50,150
  python benchmarks/vmap_seeds.py --tiny                 # checks that it works (seconds)

For each model preset of configs/yt8m.py and each N, trains seeds 0..N-1 twice: sequentially,
N calls of the ordinary trainer (vmjax.train.loop.train_and_evaluate) one after the other, and as
one vmapped program (vmjax.train.seeds.train_seeds), each into fresh run directories. Both write
what a run writes (metrics.jsonl, TensorBoard, checkpoints) and evaluate and checkpoint at the
last step only (eval_every = checkpoint_every = num_train_steps).

Two numbers per side:
  total_s     wall time of all N runs at the larger --steps value: compilation, initialisation,
              the input pipelines, the final evaluation and checkpoint included. The sequential
              runs share this process, so no process start-up is counted for them (a sweep
              pays it once per run, vmapped once per cell): the ratio understates the gain.
  per_step_s  (total at the larger --steps - total at the smaller) / (difference in steps): the
              cost of one more optimizer step of all N seeds; compilation and every fixed cost
              excluded.
speedup = sequential / vmapped (> 1: the vmapped program is faster).

The embedded dataset is generated once into --cache_dir (the default one is shared with
training runs). Results go to stdout as one table line per (model, N); progress to stderr.
Time on a quiet machine: both sides use every core.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging as std_logging
import os
import sys
import tempfile
import time

from absl import logging

from vmjax import configs
from vmjax.train import inputs, loop, seeds

PRESETS = {"moe": "", "frame": "frame"}  # video-level MoE; the starter's frame-level MoE


def _config(preset: str, steps: int, tiny: bool, cache_dir: str | None):
    path, _ = configs.resolve("yt8m")
    module = _load(path)
    args = ",".join(p for p in (PRESETS.get(preset, preset), "smoke" if tiny else "") if p)
    c = module.get_config(args)
    c.num_train_steps = c.eval_every = c.checkpoint_every = steps
    c.log_every = steps
    if cache_dir:
        c.data.cache_dir = cache_dir
    if tiny:
        c.batch_size, c.eval_batch_size = 8, 16
        c.data.synthetic.num_train, c.data.synthetic.num_validate = 64, 32
    return c


def _load(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("yt8m_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _quiet():
    """The trainers' progress lines off the console (they would interleave with the table)."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _time_sequential(config, n: int, root: str) -> float:
    start = time.perf_counter()
    for s in range(n):
        with _quiet():
            loop.train_and_evaluate(seeds.seed_config(config, s), os.path.join(root, f"s{s}"))
    return time.perf_counter() - start


def _time_vmapped(config, n: int, root: str) -> float:
    start = time.perf_counter()
    with _quiet():
        results = seeds.train_seeds(config, list(range(n)), [os.path.join(root, "v{seed}")])
    stopped = [r["stopped"] for r in results if "stopped" in r]
    if stopped:
        raise SystemExit(f"vmap_seeds: a seed stopped: {stopped[0]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="moe,frame", help="presets of configs/yt8m.py")
    p.add_argument("--seeds", default="1,3,5", help="the N values")
    p.add_argument("--steps", default="20,60", help="two num_train_steps values, smaller first")
    p.add_argument("--cache_dir", help="where the embedded dataset is (generated once)")
    p.add_argument("--tiny", action="store_true", help="smoke configs, steps 2,4, N = 1, 2")
    args = p.parse_args(argv)
    ns = [int(x) for x in args.seeds.split(",")]
    short, long_ = (int(x) for x in args.steps.split(","))
    if args.tiny:
        ns, short, long_ = [1, 2], 2, 4
    if not short < long_:
        p.error(f"--steps {args.steps}: expected two values, the smaller first")
    import jax
    import tensorboardX  # noqa: F401  (imported by the first run's writer: not timed)

    jax.devices()  # the backend starts before the first timing
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger("absl").setLevel(std_logging.WARNING)
    cache_dir = args.cache_dir
    print("model N side total_s per_step_s | speedup_total speedup_per_step")
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny and not cache_dir:
            cache_dir = os.path.join(tmp, "cache")
        for model in args.models.split(","):
            inputs.resolve_data(_config(model, long_, args.tiny, cache_dir))  # generate once
            for n in ns:
                times = {}
                for side, timer in (("sequential", _time_sequential), ("vmapped", _time_vmapped)):
                    for steps in (short, long_):
                        root = os.path.join(tmp, f"{model}-{n}-{side}-{steps}")
                        config = _config(model, steps, args.tiny, cache_dir)
                        times[side, steps] = timer(config, n, root)
                        print(
                            f"vmap_seeds: {model} N={n} {side} {steps} steps: "
                            f"{times[side, steps]:.1f} s",
                            file=sys.stderr,
                            flush=True,
                        )
                per_step = {
                    side: (times[side, long_] - times[side, short]) / (long_ - short)
                    for side in ("sequential", "vmapped")
                }
                total = {side: times[side, long_] for side in ("sequential", "vmapped")}
                for side in ("sequential", "vmapped"):
                    print(f"{model} {n} {side} {total[side]:.2f} {per_step[side]:.4f}")
                ratio_step = (
                    per_step["sequential"] / per_step["vmapped"]
                    if per_step["vmapped"] > 0
                    else float("nan")
                )
                print(
                    f"{model} {n} speedup | {total['sequential'] / total['vmapped']:.2f} "
                    f"{ratio_step:.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
