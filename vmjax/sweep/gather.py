"""A sweep's results: each finished run's final evaluation, then mean and std per grid cell.

Reads only the sweep directory (run.json, the markers, metrics.jsonl), so it can run while runs
are still going, after a crash, or on a copy of the directory. Writes OUT/results.json and
OUT/results.md. std is the sample standard deviation over seeds (n - 1 in the denominator;
undefined, null, for one seed).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Collection

from vmjax.sweep.grid import SweepError
from vmjax.sweep.runs import final_metrics, read_json, run_dir, status, write_json

TABLE_METRICS = ("gap", "map")  # then every gap_<kind> (GAP per class kind, embedded data)


def gather(out: str, slurm_active: Collection[str] | None = None) -> dict:
    """Collects OUT/runs/*; writes OUT/results.json and OUT/results.md; returns the results."""
    runs_root = os.path.join(out, "runs")
    names = sorted(os.listdir(runs_root)) if os.path.isdir(runs_root) else []
    specs = [s for s in (read_json(os.path.join(run_dir(out, n), "run.json")) for n in names) if s]
    if not specs:
        raise SweepError(f"{out}: no runs (expected {runs_root}/<name>/run.json)")
    cells: dict[str, dict] = {}
    for spec in specs:
        directory = run_dir(out, spec["name"])
        cell = cells.setdefault(
            spec["cell"],
            {"cell": spec["cell"], "overrides": spec["overrides"], "seeds": {}, "not_done": {}},
        )
        state = status(directory, slurm_active)
        metrics = _final(directory, spec) if state == "done" else None
        if metrics is None:
            cell["not_done"][str(spec["seed"])] = _describe(directory, state)
        else:
            cell["seeds"][str(spec["seed"])] = metrics
    axes = sorted({k for c in cells.values() for k in c["overrides"]})
    ordered = sorted(cells.values(), key=lambda c: [_order(c["overrides"].get(k)) for k in axes])
    for cell in ordered:
        cell["seeds"] = dict(sorted(cell["seeds"].items(), key=lambda kv: int(kv[0])))
        cell["not_done"] = dict(sorted(cell["not_done"].items(), key=lambda kv: int(kv[0])))
        cell["num_done"] = len(cell["seeds"])
        cell["mean"], cell["std"] = summary(list(cell["seeds"].values()))
    sweep = read_json(os.path.join(out, "sweep.json")) or {}
    results = {
        "config": sweep.get("config"),
        "set": sweep.get("set", []),
        "axes": axes,
        "table_metrics": _table_metrics(ordered),
        "std": "sample standard deviation over seeds (n - 1); null with fewer than 2 seeds",
        "cells": ordered,
    }
    write_json(os.path.join(out, "results.json"), results)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(results, out))
    return results


def _final(directory: str, spec: dict) -> dict | None:
    line = final_metrics(directory, spec.get("final_step"))
    if line is None:
        return None
    return {k: v for k, v in line.items() if _number(v)}


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _describe(directory: str, state: str) -> str:
    if state == "failed":
        failed = read_json(os.path.join(directory, "FAILED")) or {}
        return f"failed: {failed.get('reason', 'see log.txt')}"
    if state == "done":
        return "done, but metrics.jsonl has no final-step line"
    return state


def _order(value: str | None) -> tuple:
    """Sort key of an override value: absent first, then numbers by size, then text."""
    if value is None:
        return (0, 0.0, "")
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value)


def summary(seeds: list[dict]) -> tuple[dict, dict]:
    """Mean and sample std (None for one seed) of each metric over the seeds' metric dicts."""
    mean, std = {}, {}
    keys = [k for k in (seeds[0] if seeds else {}) if k != "step"]
    for key in keys:
        values = [float(m[key]) for m in seeds if key in m]
        mean[key] = statistics.fmean(values)
        std[key] = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def _table_metrics(cells: list[dict]) -> list[str]:
    keys: list[str] = []
    for cell in cells:
        keys += [k for k in cell["mean"] if k not in keys]
    shown = [k for k in TABLE_METRICS if k in keys] + [k for k in keys if k.startswith("gap_")]
    return shown or keys  # a config without gap/map (e.g. retrieval): every metric


def markdown(results: dict, out: str) -> str:
    """The results table: one row per cell, mean ± std over its finished seeds."""
    axes, metrics, cells = results["axes"], results["table_metrics"], results["cells"]
    done = sum(c["num_done"] for c in cells)
    total = done + sum(len(c["not_done"]) for c in cells)
    lines = [
        f"# Sweep {out}",
        "",
        f"`--config {results['config']}`"
        + (f" `--set {' '.join(results['set'])}`" if results["set"] else "")
        + f"; {done} of {total} runs finished. Mean ± std (sample, n - 1) over each cell's "
        "finished seeds, at the final evaluation step; the best mean GAP is in bold.",
        "",
    ]
    best = max((c["mean"]["gap"] for c in cells if "gap" in c["mean"]), default=None)
    header = [*axes, "seeds", *metrics]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for cell in cells:
        row = [_escape(cell["overrides"].get(k, "(default)")) for k in axes]
        row.append(f"{cell['num_done']}/{cell['num_done'] + len(cell['not_done'])}")
        for key in metrics:
            text = _mean_std(cell["mean"].get(key), cell["std"].get(key))
            bold = key == "gap" and best is not None and cell["mean"].get("gap") == best
            row.append(f"**{text}**" if bold else text)
        lines.append("| " + " | ".join(row) + " |")
    missing = [(c, seed, why) for c in cells for seed, why in c["not_done"].items()]
    if missing:
        lines += ["", "Not finished (rerun the sweep command to run them):", ""]
        lines += [f"- {c['cell']}, seed {seed}: {why}" for c, seed, why in missing]
    return "\n".join(lines) + "\n"


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None or math.isnan(mean):
        return "—"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")
