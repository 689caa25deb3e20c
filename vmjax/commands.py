"""What `python -m vmjax.main` runs: one function per (task, mode), looked up in COMMANDS.

Each takes the parsed flags' values (an `Args`) and prints its result; vmjax.main only parses
flags, sets up logging and multi-process JAX, and dispatches here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections

from vmjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Args:
    config: ml_collections.ConfigDict
    workdir: str
    step: int | None = None
    output: str | None = None
    top_k_jsonl: bool = False
    segments: bool = False
    query: str | None = None
    top_k: int = 10
    allow_config_change: tuple[str, ...] = ()


def _print_summary(prefix: str, result: dict) -> None:
    text = ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
    )
    print(f"{prefix}: {text}")


def train_classifier(a: Args) -> None:
    import jax

    from vmjax.train import loop

    result = loop.train_and_evaluate(a.config, a.workdir, a.allow_config_change)
    if jax.process_index() == 0 and result and "preempted_at" not in result:
        _print_summary("Final evaluation", result)


def evaluate(a: Args) -> None:
    import jax

    if a.segments:
        from vmjax.train import segment_inference

        result = segment_inference.evaluate_segments(a.config, a.workdir, a.step)
        print("Segment evaluation: " + ", ".join(f"{k} {v}" for k, v in result.items()))
        return
    from vmjax.train import inference

    result = inference.evaluate_checkpoint(a.config, a.workdir, a.step)
    if jax.process_index() == 0:
        print("Evaluation: " + ", ".join(f"{k} {v}" for k, v in result.items()))


def predict(a: Args) -> None:
    if a.segments:
        from vmjax.train import segment_inference

        path = segment_inference.predict_segments(a.config, a.workdir, a.step, a.output)
        print(f"Segment predictions: {path}")
        return
    from vmjax.train import inference

    path = inference.predict(a.config, a.workdir, a.step, a.output, a.top_k_jsonl)
    print(f"Predictions: {path}")


def train_retrieval(a: Args) -> None:
    from vmjax.train import retrieval

    result = retrieval.train_and_evaluate(a.config, a.workdir, a.allow_config_change)
    if result and "preempted_at" not in result:
        print(retrieval.summary(result))


def evaluate_retrieval(a: Args) -> None:
    from vmjax.train import retrieval

    print(retrieval.summary(retrieval.evaluate_checkpoint(a.config, a.workdir, a.step)))


def evaluate_audiovisual(a: Args) -> None:
    from vmjax.train import audiovisual

    print(audiovisual.summary(audiovisual.evaluate_checkpoint(a.config, a.workdir, a.step)))


def retrieve(a: Args) -> None:
    if not a.query or not a.query.strip():
        raise UserError("--mode retrieve needs --query TEXT")
    if a.top_k < 1:
        raise UserError(f"--top_k must be >= 1, got {a.top_k}")
    from vmjax import search

    found = search.search_text(a.workdir, a.query, a.top_k, config=a.config)
    if found.all_unknown:
        print(
            f"Note: no word of {a.query!r} is in the text tower's vocabulary; the query "
            "embeds as [UNK] only, so this ranking says nothing about it."
        )
    elif found.unknown:
        unknown = ", ".join(found.unknown)
        print(f"Note: not in the text tower's vocabulary (read as [UNK]): {unknown}")
    hits = found.hits
    print(
        f"Top {hits.ids.shape[1]} of {found.num_videos} {a.config.index_split} videos for "
        f"{a.query!r} (step {found.step}, {a.config.index_metric}):"
    )
    for rank, (video_id, score, classes) in enumerate(
        zip(hits.ids[0], hits.scores[0], hits.classes[0], strict=True), 1
    ):
        print(f"{rank:3d}. {video_id}  {score:.4f}  {classes}")


def train_audiovisual(a: Args) -> None:
    from vmjax.train import audiovisual

    result = audiovisual.train_and_evaluate(a.config, a.workdir, a.allow_config_change)
    if result and "preempted_at" not in result:
        print(audiovisual.summary(result))


# (config.task, --mode) -> command. A new kind of run is a new task file and a row here.
COMMANDS: dict[tuple[str, str], Callable[[Args], None]] = {
    ("classify", "train"): train_classifier,
    ("classify", "eval"): evaluate,
    ("classify", "predict"): predict,
    ("retrieval", "train"): train_retrieval,
    ("retrieval", "eval"): evaluate_retrieval,
    ("retrieval", "retrieve"): retrieve,
    ("audiovisual", "train"): train_audiovisual,
    ("audiovisual", "eval"): evaluate_audiovisual,
}
HINTS = {
    "audiovisual": "evaluate its encoders with a probe: configs/audiovisual.py:probe",
    "classify": "--mode retrieve needs a retrieval config (task='retrieval', configs/retrieval.py)",
}


def lookup(task: str, mode: str, segments: bool) -> Callable[[Args], None]:
    """The command of (task, mode); UserError naming what the task runs otherwise."""
    command = COMMANDS.get((task, mode))
    if segments and (task != "classify" or mode not in ("eval", "predict")):
        raise UserError("--segments goes with a classifier config and --mode eval or predict")
    if command is None:
        modes = sorted(m for t, m in COMMANDS if t == task)
        if not modes:
            tasks = sorted({t for t, _ in COMMANDS})
            raise UserError(f"config.task={task!r}; expected one of {tasks}")
        hint = f"; {HINTS[task]}" if task in HINTS else ""
        raise UserError(f"a {task!r} config runs --mode {' or '.join(modes)}, not {mode!r}{hint}")
    return command
