"""What a training run shows and writes as it goes: the progress bar, metrics.jsonl and
TensorBoard (through the run directory's owner, vmjax.run), and the optional batch log."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time

import jax
import numpy as np
import tqdm


class BatchLog:
    """workdir/batches/process_<i>.jsonl: per train step, a hash and the classes of the batch.

    For checking exact resumption and data sharding (config.log_batches); appends, so a resumed
    run's repeated steps appear twice and the last line of a step wins.
    """

    def __init__(self, workdir: str):
        directory = os.path.join(workdir, "batches")
        os.makedirs(directory, exist_ok=True)
        self.file = open(os.path.join(directory, f"process_{jax.process_index()}.jsonl"), "a")

    def write(self, step: int, batch: dict) -> None:
        digest = hashlib.sha1()
        for key in sorted(batch):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(batch[key]).tobytes())  # fixed-width, even ids
        classes = np.flatnonzero(batch["labels"][batch["weights"] > 0].any(0))
        line = {"step": step, "sha1": digest.hexdigest(), "classes": classes.tolist()}
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()

    def write_params(self, step: int, params) -> None:
        """A hash of this process's copy of the parameters (replicas must agree)."""
        digest = hashlib.sha1()
        for x in jax.tree.leaves(params):
            if isinstance(x, jax.Array) and not x.is_fully_replicated:
                from jax.experimental import multihost_utils

                x = multihost_utils.process_allgather(x, tiled=True)
            elif isinstance(x, jax.Array):
                x = x.addressable_data(0)  # this process's own replica
            digest.update(np.ascontiguousarray(x).tobytes())
        self.file.write(json.dumps({"step": step, "params_sha1": digest.hexdigest()}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def progress_bar(config, step: int, desc: str, *, disable: bool = False):
    """The train progress from `step` to config.num_train_steps.

    On a terminal a tqdm bar; into a log file (or a terminal too narrow for a bar) one plain
    line per log interval, with no carriage returns.
    """
    if disable:
        return tqdm.tqdm(disable=True)
    if not sys.stderr.isatty() or shutil.get_terminal_size().columns < _MIN_COLUMNS:
        return LineProgress(config.num_train_steps, step, desc)
    return tqdm.tqdm(
        total=config.num_train_steps,
        initial=step,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5,
    )


_MIN_COLUMNS = 40  # narrower (or 0 columns, as some CI logs report) and a bar shows nothing


class LineProgress:
    """tqdm's interface as lines: `desc step N/T (P%) key=value ... steps/s` per postfix."""

    def __init__(self, total: int, initial: int, desc: str, file=None):
        self.total, self.n, self.desc = total, initial, desc
        self.file = file or sys.stderr
        self._start, self._start_n = time.perf_counter(), initial

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values) -> None:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        fields = "  ".join(f"{k}={v}" for k, v in values.items())
        percent = 100 * self.n / max(self.total, 1)
        print(
            f"{self.desc} step {self.n}/{self.total} ({percent:.0f}%)  {fields}  {rate:.2f} step/s",
            file=self.file,
            flush=True,
        )

    def write(self, message: str) -> None:
        print(message, flush=True)

    def close(self) -> None:
        pass


class Writer:
    """metrics.jsonl (through the run's owner) and TensorBoard events, on the main process only.

    Every trainer writes through this, so all of them have the same outputs.
    """

    def __init__(self, run, *, enabled: bool = True):
        self.run = run if enabled else None
        self.tb = None
        if enabled:
            import tensorboardX  # clu's writers need TensorFlow; tensorboardX does not

            self.tb = tensorboardX.SummaryWriter(run.path("tensorboard"))

    def scalar(self, name: str, value, step: int) -> None:
        if self.tb:
            self.tb.add_scalar(tensorboard_name(name), float(value), step)

    def eval_line(self, line: dict) -> None:
        """Appends `line` (with its `step`) to metrics.jsonl, the rest to TensorBoard as eval/."""
        if self.run is None:
            return
        self.run.log_metrics(line)
        for k, v in line.items():
            if k != "step":
                self.scalar(f"eval/{k}", v, line["step"])
        self.tb.flush()

    def close(self) -> None:
        if self.tb:
            self.tb.close()


def tensorboard_name(name: str) -> str:
    """A name TensorBoard accepts ([A-Za-z0-9_.\\-/]): 'text_to_video/r@1' -> '.../r_at_1'."""
    name = name.replace("@", "_at_")
    return re.sub(r"[^A-Za-z0-9_.\-/]", "_", name)


def log_classifier_eval(result: dict, writer: Writer, progress) -> None:
    """A classifier evaluation: its line in metrics.jsonl and TensorBoard, and on the console."""
    keys = ["step", "gap", "map", "hit_at_1", "perr", "loss"]
    keys += [k for k in result if k.startswith("gap_")]  # per class kind, on embedded data
    writer.eval_line({k: result[k] for k in keys})
    msg = (
        f"step {result['step']}: eval GAP {result['gap']:.4f}  mAP {result['map']:.4f}  "
        f"Hit@1 {result['hit_at_1']:.4f}  PERR {result['perr']:.4f}  loss {result['loss']:.3f}  "
        f"({result['num_videos']} videos)"
    )
    if "oracle_gap" in result:
        msg += (
            f"  | oracle GAP {result['oracle_gap']:.4f}, "
            f"ratio {result['gap'] / result['oracle_gap']:.3f}"
        )
    per_kind = [k for k in keys if k.startswith("gap_")]
    if per_kind:
        msg += "\n  GAP by class kind: " + "  ".join(f"{k[4:]} {result[k]:.3f}" for k in per_kind)
    progress.write(msg)  # above the progress bar; logging it too would print it twice
