"""The owner of a run directory: its layout, its config, its lock, its history and its metrics.

A run directory (WORKDIR) holds:

    config.json        the config the run was created with, and what it resolved to; written
                       once, when the run is created, and never rewritten
    history.jsonl      one line per session that trained the run: when, where, and the
                       config changes it was allowed to make (see `changes`); and the loss
                       of the first step (the divergence guard's reference)
    lock               who is training the run now (host, pid); flock'ed while they do
    metrics.jsonl      one line per evaluation, each step at most once (across resumes)
    checkpoints/<N>/   orbax checkpoints of step N, each with a manifest of checksums
    checkpoints_rejected/  checkpoints that failed verification, moved aside with the reason
    tensorboard/       TensorBoard events
    eval/, predictions_step_<N>.csv, ...   what --mode eval / predict write

Every command that touches a run goes through this module: training opens it with
`Run.for_training` (checks the requested config against the stored one before anything is
written, takes the lock); evaluation, prediction, export, analysis, serving and distillation
teachers open it with `Run.open` (read only: the stored config with its recorded changes).

Resume rules: a run may continue with a config that differs from the stored one only in
`FREE_KEYS` (how long and how often: recorded in history.jsonl, config.json unchanged), or in
keys named by `allow` (`--allow_config_change=KEY,...`: e.g. a moved data directory or a new
learning rate, which keep the checkpoints' shapes but change what the run means). Keys under
`NEW_RUN_KEYS` (the model, the data's level and classes, the task, compression, the batch the
optimizer state was built for) are never changed on an existing run: use a new workdir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections
from absl import logging

from vmjax.errors import RunDirectoryError

CONFIG = "config.json"
HISTORY = "history.jsonl"
LOCK = "lock"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
REJECTED = "checkpoints_rejected"
TENSORBOARD = "tensorboard"

# How long and how often a run trains, logs, evaluates and saves: a resumed run may change these.
FREE_KEYS = (
    "num_train_steps",
    "eval_every",
    "checkpoint_every",
    "log_every",
    "keep_checkpoints",
    "eval_batch_size",
    "log_batches",
    "divergence_factor",
    "on_divergence",
    "data.prefetch",
    "data.workers",
    "data.read_threads",
    "data.cache_dir",  # where the embedded dataset lives; its spec, not its folder, is the data
    "eval",  # test views of --mode eval / predict (vmjax.data.views): not read by training
)
# What the checkpoints' shapes or the run's identity depend on: never changed on an existing run.
NEW_RUN_KEYS = (
    "task",
    "model",
    "compress",
    "pretrain",
    "freeze",
    "dtype",
    "batch_size",
    "seed",
    "data.level",
    "data.format",
    "data.num_classes",
    "data.max_frames",
    "data.num_frames",
    "data.image_size",
    "data.max_caption_tokens",
    "data.caption_vocab_size",
)
_MAX_LISTED = 4  # differing keys named in a refusal (the message stays a few lines)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a.b': value} of a nested dict (a config's JSON form)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_json(config: ml_collections.ConfigDict) -> dict:
    """The config as JSON data: what config.json stores and what configs are compared by."""
    return json.loads(config.to_json_best_effort())


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def changes(stored: dict, requested: dict) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (stored value, requested value)} where two configs' JSON forms differ.

    A key only the requested config has (a field added to the configs since the run was
    created) counts as a change from None.
    """
    old, new = flatten(stored), flatten(requested)
    keys = sorted(set(old) | set(new))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def check_changes(workdir: str, diff: dict[str, tuple], allow: tuple[str, ...] = ()) -> dict:
    """The allowed part of `diff`; RunDirectoryError naming every refused key otherwise."""
    refused = {k: v for k, v in diff.items() if not _under(k, FREE_KEYS) and not _under(k, allow)}
    needs_new_run = [k for k in refused if _under(k, NEW_RUN_KEYS)]
    if not refused:
        return diff
    listed = ", ".join(
        f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(refused.items())[:_MAX_LISTED]
    )
    more = f" (and {len(refused) - _MAX_LISTED} more)" if len(refused) > _MAX_LISTED else ""
    if needs_new_run:
        how = (
            f"{', '.join(needs_new_run[:_MAX_LISTED])} cannot change on an existing run: "
            "train it in a new --workdir"
        )
    else:
        how = (
            f"to continue with the change, pass --allow_config_change={','.join(refused)} "
            "(or train in a new --workdir)"
        )
    raise RunDirectoryError(
        f"{workdir} was created with another config; nothing was changed.\n"
        f"  differs: {listed}{more}\n  {how}.\n"
        f"  Keys a run may always change: {', '.join(FREE_KEYS[:5])}, ... (README: Resuming)"
    )


@dataclasses.dataclass
class Run:
    """An open run directory. `config` is the stored config with its recorded changes applied."""

    workdir: str
    config: ml_collections.ConfigDict
    resolved: dict
    _lock_file: Any = None

    # --- paths

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    @property
    def checkpoint_dir(self) -> str:
        return self.path(CHECKPOINTS)

    # --- opening

    @staticmethod
    def exists(workdir: str) -> bool:
        return os.path.isfile(os.path.join(_absolute(workdir), CONFIG))

    @classmethod
    def open(cls, workdir: str, task: str | None = None) -> Run:
        """A trained (or training) run, read only: nothing in WORKDIR is written or locked.

        task: if given, the run must be of this task ('classify', 'retrieval', 'audiovisual').
        """
        workdir = _absolute(workdir)
        stored = _read_config_file(workdir)
        data = stored["config"]
        for entry in _read_history(workdir):
            for key, (_, new) in entry.get("changes", {}).items():
                _set(data, key, new)
        config = ml_collections.ConfigDict(data)
        if task is not None and config.get("task", "classify") != task:
            raise RunDirectoryError(
                f"{workdir} is a {config.get('task', 'classify')!r} run; this needs a {task!r} "
                "run (config.task)"
            )
        return cls(workdir, config, stored.get("resolved", {}))

    @classmethod
    def check_resume(
        cls, config: ml_collections.ConfigDict, workdir: str, allow: tuple[str, ...] = ()
    ) -> dict:
        """The allowed changes of `config` against WORKDIR's stored config ({} for a new run);
        RunDirectoryError (and nothing written) for a refused one. Reads only."""
        workdir = _absolute(workdir)
        if not os.path.isfile(os.path.join(workdir, CONFIG)):
            return {}
        previous = cls.open(workdir)
        return check_changes(
            workdir, changes(config_json(previous.config), config_json(config)), allow
        )

    @classmethod
    def for_training(
        cls,
        config: ml_collections.ConfigDict,
        workdir: str,
        resolved: dict | None = None,
        *,
        allow: tuple[str, ...] = (),
        main_process: bool = True,
    ) -> Run:
        """Creates WORKDIR or reopens it to continue training with `config`, and locks it.

        On an existing run, `config` is checked against the stored one first (`check_changes`):
        a refused change raises before anything is written. The allowed changes go into
        history.jsonl; config.json is written only when the run is created. Only the main
        process writes and locks.
        """
        workdir = _absolute(workdir)
        requested = config_json(config)
        existing = os.path.isfile(os.path.join(workdir, CONFIG))
        allowed = cls.check_resume(config, workdir, allow)
        run = cls(workdir, config, resolved or {})
        if not main_process:
            return run
        os.makedirs(workdir, exist_ok=True)
        run._lock()
        if not existing:
            _write_atomic(run.path(CONFIG), {"config": requested, "resolved": resolved or {}})
        entry = {"time": _now(), "event": "resume" if existing else "create", **_who()}
        if allowed:
            entry["changes"] = {k: list(v) for k, v in allowed.items()}
            logging.info(
                "Continuing %s with changed %s (recorded in %s)",
                workdir,
                ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in allowed.items()),
                HISTORY,
            )
        if resolved and existing:
            entry["resolved"] = resolved
        run.append_history(entry)
        return run

    # --- lock

    def _lock(self) -> None:
        """flock on WORKDIR/lock; the holder's host and pid are written in it."""
        path = self.path(LOCK)
        f = open(path, "a+")  # noqa: SIM115 (held open for the run's lifetime)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise
            f.seek(0)
            holder = _parse_holder(f.read())
            f.close()
            raise RunDirectoryError(
                f"{self.workdir} is in use: another trainer (pid {holder.get('pid', '?')} on "
                f"host {holder.get('host', '?')}, since {holder.get('time', '?')}) holds "
                f"{path}.\n  Wait for it to finish or stop it; two trainers on one run "
                "would overwrite each other's checkpoints."
            ) from None
        f.seek(0)
        left = _parse_holder(f.read())
        if left.get("pid"):
            logging.warning(
                "Took over the lock of %s left by pid %s on host %s (since %s), which no longer "
                "holds it (it was killed or crashed)",
                self.workdir,
                left.get("pid"),
                left.get("host"),
                left.get("time"),
            )
        f.seek(0)
        f.truncate()
        f.write(json.dumps({**_who(), "time": _now()}))
        f.flush()
        self._lock_file = f

    def close(self) -> None:
        """Releases the lock (and clears the holder, so the next trainer sees a clean lock)."""
        if self._lock_file is None:
            return
        with contextlib.suppress(OSError):
            self._lock_file.seek(0)
            self._lock_file.truncate()
            self._lock_file.flush()
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
        self._lock_file = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- history and metrics

    def append_history(self, entry: dict) -> None:
        with open(self.path(HISTORY), "a") as f:
            f.write(json.dumps(entry) + "\n")

    def history(self) -> list[dict]:
        return _read_history(self.workdir)

    def log_metrics(self, line: dict) -> None:
        """Appends one line (with its 'step') to metrics.jsonl."""
        with open(self.path(METRICS), "a") as f:
            f.write(json.dumps(line) + "\n")

    def metrics(self) -> list[dict]:
        """metrics.jsonl's lines, in order ([] before the first)."""
        path = self.path(METRICS)
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def last_eval(self) -> dict | None:
        """The last evaluation line of metrics.jsonl (None before the first)."""
        lines = self.metrics()
        return lines[-1] if lines else None

    def forget_metrics_after(self, step: int) -> None:
        """Drops metrics.jsonl lines of steps after `step` (the checkpoint a run resumes from):
        the resumed run logs them again, so each step appears at most once."""
        lines = self.metrics()
        kept = [m for m in lines if m.get("step", 0) <= step]
        if len(kept) == len(lines):
            return
        tmp = self.path(METRICS + ".tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(m) + "\n" for m in kept)
        os.replace(tmp, self.path(METRICS))
        logging.info(
            "Dropped %d metrics.jsonl line(s) after step %d: the run repeats those steps",
            len(lines) - len(kept),
            step,
        )

    def first_train_loss(self) -> float | None:
        """The loss of the run's first step (the divergence guard's reference), if recorded."""
        for entry in self.history():
            if entry.get("event") == "first_train_loss":
                return float(entry["loss"])
        return None

    def record_first_train_loss(self, loss: float) -> None:
        self.append_history({"time": _now(), "event": "first_train_loss", "loss": loss})


def _absolute(workdir: str) -> str:
    if not workdir:
        raise RunDirectoryError("--workdir is empty: name the run directory")
    return os.path.abspath(os.path.expanduser(workdir))


def _read_config_file(workdir: str) -> dict:
    path = os.path.join(workdir, CONFIG)
    if not os.path.isfile(path):
        what = "does not exist" if not os.path.exists(workdir) else "has no config.json"
        raise RunDirectoryError(
            f"{workdir} {what}: it is not a vmjax run directory (train one with --mode train)"
        )
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirectoryError(f"{path} is unreadable ({e}); the run's config is lost") from None
    if not isinstance(stored, dict) or "config" not in stored:
        raise RunDirectoryError(f"{path} has no 'config' entry: not written by vmjax")
    return stored


def _read_history(workdir: str) -> list[dict]:
    path = os.path.join(workdir, HISTORY)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _who() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "argv": sys.argv[1:]}


def _parse_holder(text: str) -> dict:
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_atomic(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


@contextlib.contextmanager
def training(
    config: ml_collections.ConfigDict, workdir: str, resolved: dict | None = None, **kwargs
) -> Iterator[Run]:
    """`Run.for_training`, closed (unlocked) at the end."""
    run = Run.for_training(config, workdir, resolved, **kwargs)
    try:
        yield run
    finally:
        run.close()
