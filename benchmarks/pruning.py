"""Magnitude-pruning training against the same dense training: wall time per optimizer step.

  python benchmarks/pruning.py                      # video-level MoE at the smoke size, 3 repeats
  python benchmarks/pruning.py --presets frame,smoke --steps 50,450 --repeats 3

Trains configs/compress.py:prune,PRESETS and configs/yt8m.py:PRESETS (the same model, data and
batch without compression) through the normal trainer, each at two num_train_steps values into
fresh run directories, evaluating and checkpointing at the last step only. The pruning schedule
follows num_train_steps (prune from 1/6 to 2/3 of training, 12 mask updates, then fine-tune),
so both lengths prune at the same rate.

Per side and repeat:
  total_s     wall time of the longer run: compilation, the input pipeline, the final
              evaluation and checkpoint included;
  per_step_s  (total at the longer - total at the shorter) / (difference in steps): one more
              optimizer step, every fixed cost excluded (mask updates included at the
              schedule's rate).
ratio = prune / dense (issue goal: <= 1.2). Medians over --repeats, with their spread. Run on a
quiet machine; the sides alternate within each repeat so drift hits both, after one discarded
warm-up run (imports, the embedded data's cache).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time

from absl import logging

from vmjax import configs
from vmjax.train import loop


def _config(method: str | None, presets: str, steps: int, cache_dir: str | None):
    name = "compress" if method else "yt8m"
    arg = ",".join(p for p in (method, presets) if p)
    c = configs.get_config(f"{name}:{arg}" if arg else name)
    with c.unlocked():
        c.num_train_steps = c.eval_every = c.checkpoint_every = c.log_every = steps
        if cache_dir:
            c.data.cache_dir = cache_dir
    return c


def _train(config, root: str) -> float:
    start = time.perf_counter()
    sink = io.StringIO()  # the trainer's progress lines would interleave with the table
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        loop.train_and_evaluate(config, tempfile.mkdtemp(dir=root))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="smoke", help="configs/yt8m.py presets of both sides")
    p.add_argument("--steps", default="50,450", help="two num_train_steps values, smaller first")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache_dir", help="where the embedded dataset is (generated once)")
    args = p.parse_args(argv)
    short, long = (int(x) for x in args.steps.split(","))
    if not 0 < short < long or args.repeats < 1:
        p.error("--steps needs two increasing positive values and --repeats >= 1")
    logging.set_verbosity(logging.ERROR)
    sides = {"dense": None, "prune": "prune"}
    rows: dict[str, dict[str, list[float]]] = {s: {"total": [], "per_step": []} for s in sides}
    with tempfile.TemporaryDirectory(prefix="vmjax-bench-pruning-") as root:
        # Discarded: the first run in a process also pays for imports and the data cache.
        _train(_config(None, args.presets, short, args.cache_dir), root)
        for repeat in range(args.repeats):
            for side, method in sides.items():
                times = {
                    steps: _train(_config(method, args.presets, steps, args.cache_dir), root)
                    for steps in (short, long)
                }
                rows[side]["total"].append(times[long])
                rows[side]["per_step"].append((times[long] - times[short]) / (long - short))
                print(
                    f"pruning: repeat {repeat + 1} {side}: {times[short]:.1f} s ({short} steps), "
                    f"{times[long]:.1f} s ({long} steps)",
                    file=sys.stderr,
                    flush=True,
                )

    def med(side: str, key: str) -> float:
        return statistics.median(rows[side][key])

    print(
        f"presets {args.presets!r}, steps {short},{long}, {args.repeats} repeats, "
        f"{os.cpu_count()} cores"
    )
    print("side  total_s (min-max)        per_step_ms (min-max)")
    for side in sides:
        t, s = rows[side]["total"], rows[side]["per_step"]
        print(
            f"{side:5s} {med(side, 'total'):7.1f} ({min(t):.1f}-{max(t):.1f})"
            f"        {1e3 * med(side, 'per_step'):7.1f} ({1e3 * min(s):.1f}-{1e3 * max(s):.1f})"
        )
    ratios = [
        a / b for a, b in zip(rows["prune"]["per_step"], rows["dense"]["per_step"], strict=True)
    ]
    totals = [a / b for a, b in zip(rows["prune"]["total"], rows["dense"]["total"], strict=True)]
    print(
        f"prune / dense: per step {statistics.median(ratios):.2f}x "
        f"({min(ratios):.2f}-{max(ratios):.2f}), whole run {statistics.median(totals):.2f}x "
        f"({min(totals):.2f}-{max(totals):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
