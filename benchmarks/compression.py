"""Model compression against one teacher on the embedded data -> docs/compression.md.

  python benchmarks/compression.py           # full budget -> docs/compression.md
  python benchmarks/compression.py --quick   # small budget and data -> WORKDIR/compression.md

Trains the teacher (the video-level MoE of configs/yt8m.py at CPU batch size), then each method
of configs/compress.py through the normal trainer with the same budget, and measures per row:
- size: bytes of an uncompressed .npz holding the parameters as they would be stored. float32
  as is; int8 kernels as int8 values plus one float32 scale per output channel (biases stay
  float32); a pruned tensor (>= 50% zeros) as a bit mask (np.packbits, 1 bit per entry) plus its
  nonzero values (float32, or int8 after quantization);
- params: entries in the parameter tree (an int8 entry counts once), and the fraction of zeros;
- latency: CPU time per video of the jitted forward pass (sigmoid scores), at batch 1 and
  batch 256, median of repeated calls after compilation. Pruned models compute densely (XLA has
  no sparse matmul on CPU), so sparsity saves storage here, not time;
- GAP on the 4,000 (quick: 1,000) validation videos, and its ratio to the teacher's.
"""

import argparse
import json
import os
import pathlib
import platform
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from vmjax.export import MODEL_INPUT_KEYS  # noqa: E402
from vmjax.tools import configs  # noqa: E402

BUDGETS = {
    "full": {"num_train_steps": 400, "batch_size": 64, "optimizer.warmup_steps": 50},
    "quick": {
        "num_train_steps": 60,
        "batch_size": 32,
        "optimizer.warmup_steps": 10,
        "data.synthetic.num_train": 4000,
        "data.synthetic.num_validate": 1000,
    },
}
COMMON = {"eval_batch_size": 256, "optimizer.learning_rate": 0.01}
LATENCY_BATCHES = (1, 256)


def _load_config(name: str, arg: str):
    return configs.get_config(ROOT / "configs" / name, arg)


def rows(workdir: str) -> list[dict]:
    """label, config file:presets, overrides, and which run's int8 copy a ptq row makes."""
    w = lambda name: os.path.join(workdir, name)  # noqa: E731
    return [
        {"label": "teacher: MoE float32", "name": "teacher", "config": "yt8m.py:moe"},
        {"label": "prune 90%", "name": "prune", "config": "compress.py:prune"},
        {
            "label": "ptq int8 (of teacher)",
            "name": "ptq",
            "config": "compress.py:ptq",
            "overrides": {"compress.source_workdir": w("teacher")},
        },
        {
            "label": "ptq int8 weights only",
            "name": "ptq_weights",
            "config": "compress.py:ptq",
            "overrides": {"compress.source_workdir": w("teacher"), "compress.act_dtype": ""},
        },
        {"label": "qat", "name": "qat", "config": "compress.py:qat"},
        {
            "label": "qat -> int8",
            "name": "qat_int8",
            "config": "compress.py:ptq",
            "overrides": {"compress.source_workdir": w("qat")},
        },
        {
            "label": "prune 90% -> int8",
            "name": "prune_int8",
            "config": "compress.py:ptq",
            "overrides": {"compress.source_workdir": w("prune")},
        },
        {"label": "logistic (labels only)", "name": "logistic", "config": "yt8m.py:logistic"},
        {
            "label": "distill -> logistic",
            "name": "distill",
            "config": "compress.py:distill",
            "overrides": {"compress.teacher_workdir": w("teacher")},
        },
    ]


def run(row: dict, budget: str, workdir: str) -> dict:
    from vmjax.train import loop

    name, arg = row["config"].split(":")
    config = _load_config(name, arg)
    overrides = {**COMMON, **BUDGETS[budget], **row.get("overrides", {})}
    steps = overrides["num_train_steps"]
    overrides.update({"eval_every": steps, "checkpoint_every": steps, "log_every": steps // 4})
    configs.apply_overrides(config, overrides)
    run_dir = os.path.join(workdir, row["name"])  # a finished run is reused (loop resumes)
    start = time.time()
    result = loop.train_and_evaluate(config, run_dir)
    seconds = time.time() - start
    args = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
    return {
        **row,
        "dir": run_dir,
        "seconds": round(seconds, 1),
        "gap": result["gap"],
        "map": result["map"],
        "command": f"python -m vmjax.main --config configs/{row['config']} --workdir W {args}",
    }


def _restore(run_dir: str):
    """(model, variables) of a run as it is deployed: int8 for ptq runs, float otherwise."""
    from vmjax import run as run_lib
    from vmjax import trained
    from vmjax.compress import quantization

    config = run_lib.Run.open(run_dir).config
    if config.compress.method == "ptq":
        qmodel, qparams, model_state, _, _ = quantization.quantize_run(config)
        return qmodel, {"params": qparams, **model_state}, config
    run = trained.load(run_dir)  # qat: float weights
    return run.model, run.variables, config


def _storage_bytes(arrays: dict[str, np.ndarray], path: str) -> int:
    """Writes the arrays (sparse ones as bit mask + nonzero values) to `path`; its size."""
    out = {}
    for name, x in arrays.items():
        zeros = x == 0
        if x.size >= 1024 and zeros.mean() >= 0.5:
            out[f"{name}.mask"] = np.packbits(~zeros)
            out[f"{name}.values"] = x[~zeros]
        else:
            out[name] = x
    with open(path, "wb") as f:
        np.savez(f, **out)
    return os.path.getsize(path)


def _latency_ms(model, variables, config, batch_size: int, repeats: int) -> float:
    from vmjax.data import pipeline
    from vmjax.data.device import model_inputs

    batch = pipeline.example_batch(pipeline.BatchSpec.from_config(config.data).for_eval(), 1)
    rng = np.random.default_rng(0)
    batch = {  # random uint8 features (their values do not change the work done)
        k: rng.integers(0, 256, (batch_size, *v.shape[1:]), dtype=v.dtype)
        if v.dtype == np.uint8
        else np.repeat(v, batch_size, 0)
        for k, v in batch.items()
        if k in MODEL_INPUT_KEYS
    }

    @jax.jit
    def scores(variables, batch):
        return jax.nn.sigmoid(model.apply(variables, model_inputs(batch), train=False))

    batch = jax.device_put(batch)
    scores(variables, batch).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scores(variables, batch).block_until_ready()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / batch_size


def measure(row: dict, workdir: str, repeats: int) -> dict:
    from vmjax.compress import quantization

    model, variables, config = _restore(row["dir"])
    arrays = quantization.storage_arrays(variables["params"])
    size = _storage_bytes(arrays, os.path.join(workdir, f"{row['name']}_params.npz"))
    leaves = jax.tree.leaves(variables["params"], is_leaf=quantization.is_quantized)
    values = [np.asarray(x.qvalue if quantization.is_quantized(x) else x) for x in leaves]
    params = sum(x.size for x in values)
    zeros = sum(int((x == 0).sum()) for x in values)
    latency = {
        b: _latency_ms(model, variables, config, b, repeats if b > 1 else 5 * repeats)
        for b in LATENCY_BATCHES
    }
    return {
        **row,
        "model": config.model.name,
        "bytes": size,
        "params": params,
        "sparsity": zeros / params,
        "int8": any(quantization.is_quantized(x) for x in leaves),
        **{f"ms_per_video_b{b}": v for b, v in latency.items()},
    }


def render(results: list[dict], budget: str, seconds: float, command: str) -> str:
    teacher = results[0]
    lines = [
        "# Model compression on the embedded data",
        "",
        f"Generated by `{command}` (benchmarks/compression.py); do not edit by hand.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
        f"(shared), jax {jax.__version__} on {jax.default_backend()}. Budget '{budget}': "
        f"{BUDGETS[budget]}; whole benchmark {seconds / 60:.1f} min.",
        "",
        "Every row trains (or quantizes) through the normal trainer from the command below; the "
        "teacher is the video-level MoE (2 mixtures, 3,862 classes). Sizes are the bytes of an "
        "uncompressed .npz of the parameters as stored: float32; int8 values + a float32 scale "
        "per output channel; tensors with >= 50% zeros as a 1-bit mask + their nonzero values. "
        "int8 rows also quantize the activations per row on the fly and multiply int8 x int8 "
        "(int32 sums), except 'weights only', which multiplies the dequantized float32 weights. "
        "The qat row is the QAT run itself (float32 weights, evaluated with fake quantization); "
        "'qat -> int8' is its int8 copy. Latency: the jitted forward pass on this CPU per "
        "video, at batch 1 and 256 (median); pruned rows compute densely.",
        "",
        "| method | model | size (MiB) | vs teacher | params | zeros | int8 | ms/video b1 "
        "| ms/video b256 | GAP | GAP retained |",
        "|---|---|---:|---:|---:|---:|:-:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['model']} | {r['bytes'] / 2**20:.2f} | "
            f"{teacher['bytes'] / r['bytes']:.1f}x smaller | {r['params']:,} | "
            f"{r['sparsity']:.1%} | {'yes' if r['int8'] else 'no'} | "
            f"{r['ms_per_video_b1']:.3f} | {r['ms_per_video_b256']:.4f} | {r['gap']:.4f} | "
            f"{r['gap'] / teacher['gap']:.1%} |"
        )
    lines += ["", "Commands (W: the row's workdir; ptq rows read their source run's):", ""]
    lines += [f"- {r['label']}: `{r['command']}` ({r['seconds']} s)" for r in results]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and budget")
    parser.add_argument("--workdir", default="/tmp/vmjax_compression", help="run directories")
    parser.add_argument(
        "--out", default=None, help="markdown (default: docs/compression.md; --quick: WORKDIR)"
    )
    parser.add_argument("--fresh", action="store_true", help="delete WORKDIR's runs first")
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="measure size and latency of WORKDIR's finished runs again (compression.json)",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per latency")
    args = parser.parse_args()
    budget = "quick" if args.quick else "full"
    out = args.out or (
        os.path.join(args.workdir, "compression.md")
        if args.quick
        else str(ROOT / "docs" / "compression.md")
    )
    if args.fresh:
        shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir, exist_ok=True)
    command = "python benchmarks/compression.py" + (" --quick" if args.quick else "")
    if args.remeasure:  # the table's sizes and latencies come from the second command
        command += f"` then `{command} --remeasure"
    start = time.time()
    results = []
    saved = os.path.join(args.workdir, "compression.json")
    if args.remeasure:  # the runs of the last benchmark in WORKDIR, measured again
        with open(saved) as f:
            trained = json.load(f)
        seconds = trained[0].get("benchmark_seconds", 0.0)
    else:
        trained = [run(row, budget, args.workdir) for row in rows(args.workdir)]
        seconds = time.time() - start
    # Measured one after another once all are trained, so the machine's load is alike for all.
    for row in trained:
        print(f"== {row['label']}", flush=True)
        r = measure(row, args.workdir, args.repeats)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "command"}), flush=True)
    if not args.remeasure:
        seconds = time.time() - start
    results[0]["benchmark_seconds"] = seconds
    text = render(results, budget, seconds, command)
    with open(out, "w") as f:
        f.write(text)
    with open(saved, "w") as f:
        json.dump(results, f, indent=1)
    print(text)
    print(f"Wrote {out}; the benchmark took {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
