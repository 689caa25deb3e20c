"""The training loop: data -> model -> jitted steps -> metrics -> checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from vmjax import compress, metrics
from vmjax.data import pipeline, synthetic
from vmjax.train import parallel, pretrained
from vmjax.train import state as state_lib
from vmjax.train.checkpoint import Checkpointer, complete_steps

FORMATS = ("tfrecord", "array_record", "video_files")
CSV_LAYOUTS = ("labels", "kinetics")


def resolve_data(config: ml_collections.ConfigDict) -> tuple[list, list, str | None]:
    """Train and eval files; with no patterns, the embedded dataset (generated once).

    For data.format 'video_files' the "files" are (video path, class indices) items and the
    embedded dataset is synthetic mp4s (vmjax.data.synthetic_video).
    """
    d = config.data
    if bool(d.train_pattern) != bool(d.eval_pattern):
        raise ValueError(
            "set both config.data.train_pattern and config.data.eval_pattern, or "
            "neither (to use the embedded dataset)"
        )
    if d.format == "video_files":
        return _video_items(d)
    if d.format == "array_record":
        if not d.train_pattern:
            raise ValueError(
                "data.format='array_record' needs data.train_pattern and data.eval_pattern as "
                "DIR:SPLIT of a dataset written by `python -m vmjax.data.convert`"
            )
        return [_split_ref(d.train_pattern)], [_split_ref(d.eval_pattern)], None
    if d.format != "tfrecord":
        raise ValueError(f"config.data.format={d.format!r}; expected one of {FORMATS}")
    data_dir = None
    train_pattern, eval_pattern = d.train_pattern, d.eval_pattern
    if not train_pattern:
        spec = synthetic.Spec(num_classes=d.num_classes, **d.synthetic.to_dict())
        # Process 0 generates while the others wait; they then find it (on a shared disk) or
        # generate the identical data themselves (on a local one).
        if jax.process_count() > 1 and jax.process_index() > 0:
            _barrier("embedded data")
        data_dir = synthetic.ensure(d.cache_dir, spec, log=logging.info)
        if jax.process_count() > 1 and jax.process_index() == 0:
            _barrier("embedded data")
        train_pattern, eval_pattern = synthetic.patterns(data_dir, d.level)
    return (
        pipeline.resolve_files(train_pattern, "data.train_pattern"),
        pipeline.resolve_files(eval_pattern, "data.eval_pattern"),
        data_dir,
    )


def _video_items(d: ml_collections.ConfigDict) -> tuple[list, list, str | None]:
    """(path, class indices) of the train and eval videos; with no CSVs, synthetic mp4s."""
    from vmjax.data import synthetic_video, video_files

    if d.csv_layout not in CSV_LAYOUTS:
        raise ValueError(f"config.data.csv_layout={d.csv_layout!r}; expected one of {CSV_LAYOUTS}")
    if d.csv_layout == "kinetics" and d.train_pattern and not d.video_root:
        raise ValueError("config.data.csv_layout='kinetics' needs config.data.video_root")
    data_dir, layout = None, d.csv_layout
    train_csv, eval_csv = d.train_pattern, d.eval_pattern
    if not train_csv:
        if d.num_classes != len(synthetic_video.CLASSES):
            raise ValueError(
                f"the synthetic videos have {len(synthetic_video.CLASSES)} classes; "
                f"config.data.num_classes is {d.num_classes}"
            )
        # As for the embedded YT8M data: process 0 generates, the others wait, then reuse it.
        if jax.process_count() > 1 and jax.process_index() > 0:
            _barrier("synthetic videos")
        data_dir = synthetic_video.ensure(
            d.cache_dir, log=logging.info, **d.synthetic_video.to_dict()
        )
        if jax.process_count() > 1 and jax.process_index() == 0:
            _barrier("synthetic videos")
        train_csv = os.path.join(data_dir, "train.csv")
        eval_csv = os.path.join(data_dir, "validate.csv")
        layout = "labels"
    train_csv, eval_csv = os.path.expanduser(train_csv), os.path.expanduser(eval_csv)
    if layout == "kinetics":
        classes = video_files.kinetics_classes(train_csv)
        if len(classes) != d.num_classes:
            raise ValueError(
                f"{train_csv} names {len(classes)} classes; config.data.num_classes is "
                f"{d.num_classes}"
            )
        train = video_files.read_kinetics_csv(train_csv, _split_root(d.video_root, train_csv))
        evals = video_files.read_kinetics_csv(
            eval_csv, _split_root(d.video_root, eval_csv), classes
        )
    else:
        vocabulary = os.path.expanduser(d.vocabulary) if d.vocabulary else None
        train = video_files.read_label_csv(train_csv, d.num_classes, vocabulary)
        evals = video_files.read_label_csv(eval_csv, d.num_classes, vocabulary)
    for items, csv_path in ((train, train_csv), (evals, eval_csv)):
        if not items:
            raise ValueError(f"{csv_path} lists no videos")
    return train, evals, data_dir


def _split_root(video_root: str, csv_path: str) -> str:
    """The folder of a Kinetics split's clips: video_root/<CSV name> if it exists, else video_root.

    video_root/train for train.csv is the layout of the common Kinetics downloaders.
    """
    root = os.path.expanduser(video_root)
    split = os.path.join(root, os.path.splitext(os.path.basename(csv_path))[0])
    return split if os.path.isdir(split) else root


def _video_dataset(config, items: list, batch_size: int, bad_files, *, train: bool):
    from vmjax.data import video_files

    d = config.data
    return video_files.video_dataset(
        items,
        batch_size=batch_size,
        num_classes=d.num_classes,
        num_frames=d.num_frames,
        size=d.image_size,
        sampling=d.sampling,
        stride=d.frame_stride,
        fps=d.fps,
        seed=d.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        train=train,
        on_error=d.on_error,
        bad_files=bad_files,
        prefetch=d.prefetch,
        read_threads=d.read_threads,
        # Worker processes stream training batches; one eval pass is not worth starting them.
        workers=d.workers if train else 0,
    )


def _split_ref(ref: str) -> str:
    """Checks a DIR:SPLIT reference to an indexed dataset and opens nothing yet."""
    data_dir, _, split = ref.rpartition(":")
    if not data_dir or not split:
        raise ValueError(f"{ref!r} is not DIR:SPLIT (e.g. /data/yt8m_ar:train)")
    if not os.path.exists(os.path.join(os.path.expanduser(data_dir), "dataset_info.json")):
        raise FileNotFoundError(f"{data_dir} has no dataset_info.json (see vmjax.data.convert)")
    return ref


def _open_split(ref: str, level: str):
    from vmjax.data import indexed

    data_dir, _, split = ref.rpartition(":")
    return indexed.open_source(data_dir, split, level=level)


def train_stream(config, spec, files: list[str], batch_size: int, bad_records=None):
    """This process's infinite iterator of training batches (TFRecords, ArrayRecord, videos)."""
    d = config.data
    if d.format == "video_files":
        return iter(_video_dataset(config, files, batch_size, bad_records, train=True))
    if d.format == "array_record":
        from vmjax.data import indexed

        return iter(
            indexed.train_dataset(
                _open_split(files[0], d.level),
                lambda item: item,  # the batch function decodes (and skips bad records)
                batch_size=batch_size,
                seed=config.seed,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                collate=pipeline.make_batcher(spec, batch_size, bad_records),
                prefetch=d.prefetch,
                workers=d.workers,
            )
        )
    my_files = pipeline.shard_files(files, jax.process_index(), jax.process_count())
    return iter(
        pipeline.train_dataset(
            my_files,
            spec,
            batch_size=batch_size,
            seed=config.seed,
            shuffle_buffer=d.shuffle_buffer,
            cycle_length=d.cycle_length,
            prefetch=d.prefetch,
            workers=d.workers,
            bad_records=bad_records,
        )
    )


def eval_stream(config, spec, files: list[str], batch_size: int, bad_records=None):
    """This process's share of the evaluation batches, in order, one pass."""
    if config.data.format == "video_files":
        return iter(_video_dataset(config, files, batch_size, bad_records, train=False))
    if config.data.format == "array_record":
        from vmjax.data import indexed

        spec = spec.for_eval()
        return indexed.eval_batches(
            _open_split(files[0], config.data.level),
            lambda item: item,
            pipeline.make_batcher(spec, batch_size, bad_records),
            batch_size,
            jax.process_index(),
            jax.process_count(),
        )
    my_files = pipeline.shard_files(files, jax.process_index(), jax.process_count())
    return pipeline.eval_batches(my_files, spec, batch_size=batch_size, bad_records=bad_records)


def _barrier(name: str) -> None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def evaluate(
    eval_fn,
    state,
    files: list[str],
    config: ml_collections.ConfigDict,
    class_groups: dict[str, np.ndarray] | None = None,
    bad_records: pipeline.BadRecords | None = None,  # or video_files.BadFiles
    per_class: bool = False,
) -> dict:
    """GAP@20, mAP, Hit@1, PERR and mean loss over one pass of the eval data `files`.

    Each process reads its share (eval_stream).

    `eval_fn(state, batch)` takes this process's batch and returns the global batch's `scores`,
    `labels`, `weights`, `loss_sum` and `count` (gathered over processes), so every process
    computes the metrics of the whole evaluation set.
    With `class_groups` (name -> class indices), also `gap_<name>`: GAP@20 over those
    classes' columns only (e.g. per class kind of the embedded data).
    """
    video = config.data.format == "video_files"
    spec = None if video else pipeline.BatchSpec.from_config(config.data)
    evaluator = metrics.Evaluator(config.data.num_classes, threshold=0.5 if per_class else None)
    groups = {
        name: (cols, metrics.Evaluator(len(cols)))
        for name, cols in (class_groups or {}).items()
        if len(cols)
    }
    loss_sum = count = 0.0
    batch_size = config.eval_batch_size // jax.process_count()
    batches = eval_stream(config, spec, files, batch_size, bad_records)
    for batch in _eval_batches_in_step(batches, config.data, batch_size):
        out = eval_fn(state, batch)
        scores, labels, weights = (np.asarray(out[k]) for k in ("scores", "labels", "weights"))
        if not np.isfinite(scores[weights > 0]).all():
            raise FloatingPointError("eval scores are NaN: the parameters have diverged")
        evaluator.update(scores, labels, weights=weights)
        for cols, group in groups.values():
            group.update(scores[:, cols], labels[:, cols], weights=weights)
        loss_sum += float(out["loss_sum"])
        count += float(out["count"])
    result = evaluator.result()
    out = {
        "gap": result["gap"],
        "map": result["map"],
        "hit_at_1": result["hit_at_1"],
        "perr": result["perr"],
        "loss": loss_sum / max(count, 1.0),
        "num_videos": int(result["num_videos"]),
    }
    for name, (_, group) in groups.items():
        out[f"gap_{name}"] = group.result()["gap"]
    if per_class:  # also precision/recall/F1 of scores >= 0.5 and per-class AP arrays
        out.update({k: result[k] for k in ("precision", "recall", "f1")})
        out["per_class_ap"], out["class_positives"] = evaluator.per_class_ap()
    return out


def _eval_batches_in_step(batches, data: ml_collections.ConfigDict, batch_size: int):
    """This process's eval batches; with several processes, until all are done.

    Every process must join each (collective) eval step, so a process whose share ran out
    joins with zero-weight batches until the last one finishes.
    """
    if jax.process_count() == 1:
        yield from batches
        return
    from jax.experimental import multihost_utils

    empty = pipeline.config_example_batch(data, batch_size)
    while True:
        batch = next(batches, None)
        if not multihost_utils.process_allgather(np.array(batch is not None)).any():
            return
        yield empty if batch is None else batch


def write_config(
    config: ml_collections.ConfigDict, workdir: str, train_files, eval_files, data_dir
) -> None:
    """WORKDIR/config.json: the config and what it resolved to (files, embedded data, devices)."""

    def first(files):  # a file name, or a (video path, labels) item's path
        return files[0][0] if isinstance(files[0], tuple) else files[0]

    resolved = {
        "config": json.loads(config.to_json_best_effort()),
        "resolved": {
            "train_files": len(train_files),
            "eval_files": len(eval_files),
            "train_first": first(train_files),
            "eval_first": first(eval_files),
            "embedded_data_dir": data_dir,
            "jax_devices": len(jax.devices()),
            "jax_processes": jax.process_count(),
        },
    }
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(resolved, f, indent=2)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """Trains, evaluates every `eval_every` steps and checkpoints; resumes automatically.

    Returns the last evaluation's metrics (plus the oracle's GAP on embedded data). On SIGTERM
    (or a multi-host preemption notice) it saves a checkpoint at the current step and returns
    {'preempted_at': step}; running the same command again continues exactly from there.
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    d = config.data
    local_batch = parallel.local_batch_size(config.batch_size)
    parallel.local_batch_size(config.eval_batch_size, "eval_batch_size")  # splits evenly?
    per_device = local_batch // jax.local_device_count()
    if config.grad_accum < 1 or per_device % config.grad_accum:
        raise ValueError(
            f"config.grad_accum={config.grad_accum} must divide the per-device batch "
            f"({per_device} = batch_size {config.batch_size} / {jax.device_count()} devices)"
        )
    if d.on_error not in pipeline.ON_ERROR:
        raise ValueError(
            f"config.data.on_error={d.on_error!r}; expected one of {pipeline.ON_ERROR}"
        )
    video = d.format == "video_files"
    bad_records = None
    if d.on_error == "skip":
        from vmjax.data import video_files

        bad_records = video_files.BadFiles() if video else pipeline.BadRecords()
    if config.on_nonfinite_loss not in ("stop", "skip"):
        raise ValueError(
            f"config.on_nonfinite_loss={config.on_nonfinite_loss!r}; expected 'stop' or 'skip'"
        )
    train_files, eval_files, data_dir = resolve_data(config)
    if is_main:
        write_config(config, workdir, train_files, eval_files, data_dir)
    if compress.method(config) == "ptq":
        return _quantize_and_evaluate(config, workdir, eval_files, data_dir, bad_records)

    model, tx, state = state_lib.init_run(config)
    if pretrained.init_workdir(config) and not complete_steps(os.path.join(workdir, "checkpoints")):
        params = pretrained.initialize(config, state.params)
        state = state.replace(params=params, opt_state=tx.init(params))
    par = parallel.create(config, model, tx)
    spec = None if video else pipeline.BatchSpec.from_config(d)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info(
        "Model %s: %s parameters; %s over %d devices (%d processes), %s compute",
        config.model.name,
        f"{num_params:,}",
        config.parallelism,
        jax.device_count(),
        jax.process_count(),
        config.dtype,
    )
    state = par.put_state(state)

    train_iter = train_stream(config, spec, train_files, local_batch, bad_records)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    restored = ckpt.resume(par.checkpoint_view(state), train_iter, config.num_train_steps)
    if restored is not None:
        state = par.put_state(restored)

    def eval_fn(state, batch):
        return par.eval_step(state, par.put_batch(batch))

    writer = None
    if is_main:
        import tensorboardX  # clu's writers need TensorFlow; tensorboardX does not

        writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
    # The oracle and class kinds belong to the embedded YT8M features, not the synthetic videos.
    oracle = synthetic.read_oracle(data_dir) if data_dir and not video else None
    kinds = synthetic.class_kinds(data_dir) if data_dir and not video else None
    batch_log = _BatchLog(workdir) if config.log_batches else None
    guard = _NonFiniteGuard(config.on_nonfinite_loss, ckpt)
    preemption = _Preemption()

    step = int(np.asarray(par.checkpoint_view(state).step))
    last_eval = None
    progress = progress_bar(config, step, "train", disable=not is_main)
    tick, tick_step = time.perf_counter(), step
    try:
        while step < config.num_train_steps:
            batch = next(train_iter)
            if batch_log:
                batch_log.write(step + 1, batch)
            state, train_metrics = par.train_step(state, par.put_batch(batch))
            step += 1
            progress.update(1)
            guard.add(step, train_metrics["finite"])
            last = step == config.num_train_steps
            if step % config.log_every == 0 or last:
                guard.check()
                loss = float(train_metrics["loss"])
                now = time.perf_counter()
                rate = (step - tick_step) * config.batch_size / (now - tick)
                tick, tick_step = now, step
                progress.set_postfix(loss=f"{loss:.3f}", ex_per_s=f"{rate:,.0f}")
                if writer:
                    writer.add_scalar("train/loss", loss, step)
                    writer.add_scalar("train/grad_norm", float(train_metrics["grad_norm"]), step)
                    writer.add_scalar("train/examples_per_s", rate, step)
                    writer.add_scalar("train/skipped_updates", guard.skipped, step)
            if step % config.eval_every == 0 or last:
                guard.check()
                try:
                    result = evaluate(eval_fn, state, eval_files, config, kinds, bad_records)
                except FloatingPointError as e:
                    raise guard.error(f"{e} at step {step}") from None
                last_eval = {"step": step, **result}
                if oracle:
                    last_eval["oracle_gap"] = oracle["gap"]
                    for kind in synthetic.KINDS:
                        last_eval[f"oracle_gap_{kind}"] = oracle[f"gap_{kind}"]
                if is_main:
                    _log_eval(last_eval, workdir, writer, progress)
            preempted = preemption.reached(step)  # every process asks at every step
            if step % config.checkpoint_every == 0 or last or preempted:
                guard.check()  # never checkpoint parameters a NaN has reached
                ckpt.save(step, par.checkpoint_view(state), train_iter)
            if preempted and not last:
                ckpt.wait()
                (progress.write if is_main else logging.info)(
                    f"Preempted (SIGTERM) at step {step}: saved checkpoint "
                    f"{os.path.join(ckpt.directory, str(step))}; run the same command to resume"
                )
                return {"preempted_at": step}
        if batch_log:
            batch_log.write_params(step, par.checkpoint_view(state).params)
    finally:
        preemption.restore()
        progress.close()
        ckpt.wait()
        ckpt.close()
        if writer:
            writer.close()
        if batch_log:
            batch_log.close()
    if bad_records is not None:
        logging.warning(
            "data.on_error='skip': skipped %d bad %s in all (logged above)%s",
            bad_records.count,
            "video file(s)" if video else "record(s)",
            "; reader processes count their own" if d.workers else "",
        )
    if last_eval is None:
        last_eval = last_logged_eval(workdir)
        logging.info("Already trained to step %d; last evaluation: %s", step, last_eval)
    return last_eval


def _quantize_and_evaluate(config, workdir: str, eval_files, data_dir, bad_records) -> dict:
    """compress.method='ptq': int8 parameters of compress.source_workdir, evaluated like a run.

    Writes workdir/quantized.npz (vmjax.compress.quantization.save) and one metrics.jsonl line
    at the source run's step; trains nothing.
    """
    from vmjax.compress import quantization

    qmodel, state, step, _ = quantization.quantize_run(config)
    if jax.process_index() == 0:
        path = os.path.join(workdir, "quantized.npz")
        size = quantization.save(path, state.params)
        logging.info(
            "Quantized %s (step %d): %s bytes in %s",
            config.compress.source_workdir,
            step,
            f"{size:,}",
            path,
        )
    par = parallel.create(config, qmodel, None)
    state = par.put_state(state)

    def eval_fn(state, batch):
        return par.eval_step(state, par.put_batch(batch))

    video = config.data.format == "video_files"
    kinds = synthetic.class_kinds(data_dir) if data_dir and not video else None
    result = {"step": step, **evaluate(eval_fn, state, eval_files, config, kinds, bad_records)}
    if jax.process_index() == 0:
        _log_eval(result, workdir, None, tqdm.tqdm)  # tqdm.write: no bar for one evaluation
    return result


class _NonFiniteGuard:
    """Watches each step's `finite` flag without a device sync per step.

    Flags are collected and read at log, eval and checkpoint steps. In 'stop' mode a NaN/Inf
    loss raises FloatingPointError naming the first bad step and the last good checkpoint
    (checked before every save, so no checkpoint holds the bad parameters); in 'skip' mode the
    step already kept the old parameters and this counts the skipped updates.
    """

    def __init__(self, mode: str, ckpt: Checkpointer):
        self.mode, self.ckpt, self.pending, self.skipped = mode, ckpt, [], 0

    def add(self, step: int, finite) -> None:
        self.pending.append((step, finite))

    def check(self) -> None:
        if not self.pending:
            return
        steps = [s for s, _ in self.pending]
        flags = np.asarray(jax.device_get([f for _, f in self.pending]))
        self.pending = []
        bad = [s for s, ok in zip(steps, flags, strict=True) if not ok]
        if not bad:
            return
        if self.mode == "skip":
            self.skipped += len(bad)
            logging.warning(
                "Skipped %d update(s) with a NaN/Inf loss or gradient at steps %s (%d in all)",
                len(bad),
                bad[:10],
                self.skipped,
            )
            return
        raise self.error(f"train loss, gradient or parameter is NaN/Inf at step {bad[0]}")

    def error(self, what: str) -> FloatingPointError:
        self.ckpt.wait()
        good = self.ckpt.latest_step()
        where = f"step {good} in {self.ckpt.directory}" if good is not None else "none saved yet"
        return FloatingPointError(
            f"{what}; last good checkpoint: {where}. Lower the learning rate, or set "
            "config.on_nonfinite_loss='skip' to skip updates with a NaN/Inf loss."
        )


class _Preemption:
    """True at the step where every process should save and stop after a SIGTERM.

    One process: our SIGTERM handler sets a flag. Several: JAX's preemption service (started by
    jax.distributed.initialize) hears the signal and picks a step all processes reach.
    """

    def __init__(self):
        self.flag = False
        self.previous = None
        if jax.process_count() == 1:
            try:
                self.previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                self.previous = None

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.flag = True

    def reached(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.flag
        from jax.experimental import multihost_utils

        return multihost_utils.reached_preemption_sync_point(step)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None


class _BatchLog:
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


def progress_bar(config, step: int, desc: str, *, disable: bool = False) -> tqdm.tqdm:
    """The train progress bar from `step` to config.num_train_steps."""
    # Redraw often on a terminal; into a log file, a line every 30 s is plenty.
    return tqdm.tqdm(
        total=config.num_train_steps,
        initial=step,
        disable=disable,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30,
    )


def log_metrics(line: dict, workdir: str, writer) -> None:
    """Appends `line` (with its `step`) to WORKDIR/metrics.jsonl, the rest to TensorBoard."""
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")
    if writer:
        for k, v in line.items():
            if k != "step":
                writer.add_scalar(f"eval/{k}", v, line["step"])
        writer.flush()


def last_logged_eval(workdir: str) -> dict | None:
    """The last line of WORKDIR/metrics.jsonl (None before the first evaluation)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    return json.loads(lines[-1]) if lines else None


def _log_eval(result: dict, workdir: str, writer, progress) -> None:
    keys = ["step", "gap", "map", "hit_at_1", "perr", "loss"]
    keys += [k for k in result if k.startswith("gap_")]  # per class kind, on embedded data
    log_metrics({k: result[k] for k in keys}, workdir, writer)
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
