"""vmjax entry point: flags only; the work happens in vmjax.train.loop (classification),
vmjax.train.contrastive (configs with task='retrieval', e.g. configs/retrieval.py) or
vmjax.train.audiovisual (task='audiovisual': configs/audiovisual.py's pretraining).

python -m vmjax.main --config configs/yt8m.py --workdir /tmp/w
python -m vmjax.main --config configs/yt8m.py:smoke --workdir /tmp/w --config.batch_size=64
python -m vmjax.main --config configs/retrieval.py:smoke --workdir /tmp/r
python -m vmjax.main --config configs/retrieval.py:smoke --workdir /tmp/r --mode retrieve \
    --query "guitar solo on stage" --top_k 10
python -m vmjax.main --config configs/audiovisual.py:smoke --workdir /tmp/av
python -m vmjax.main --config configs/audiovisual.py:probe,smoke --workdir /tmp/p \
    --config.init_from.workdir=/tmp/av

Multi-host: on a SLURM job or a Cloud TPU VM slice jax.distributed is initialised from the
environment; elsewhere pass --coordinator_address, --num_processes and --process_id (see
launch/local.sh). Only process 0 logs, writes metrics and shows progress.
"""

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from vmjax import distributed

config_flags.DEFINE_config_file(
    "config",
    None,
    "A config file with get_config(arg), optionally followed by :PRESETS (e.g. "
    "configs/yt8m.py:smoke). Any field can be overridden with --config.FIELD=VALUE, "
    "e.g. --config.batch_size=64 or --config.data.train_pattern=GLOB.",
    lock_config=True,
)
flags.DEFINE_string(
    "workdir",
    None,
    "Run directory: checkpoints/, metrics.jsonl, tensorboard/ and the resolved "
    "config.json. Running again with the same workdir resumes from its latest "
    "checkpoint.",
)
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "predict", "retrieve"],
    "train: train, evaluating every config.eval_every steps (a config with task='retrieval' "
    "trains the text-video joint embedding, task='audiovisual' pretrains the rgb and audio "
    "encoders without labels). eval: metrics of a checkpoint "
    "(--step, default the latest) on the eval data, with per-class AP, into WORKDIR/eval/. "
    "predict: the Kaggle CSV (VideoId,LabelConfidencePairs) for the eval data. "
    "retrieve (retrieval runs): the --top_k videos nearest to --query, from WORKDIR/index.npz "
    "(built from the latest checkpoint on first use).",
)
flags.DEFINE_string("query", None, "retrieve: the text to search the videos for.")
flags.DEFINE_integer("top_k", 10, "retrieve: how many videos to print.")
flags.DEFINE_bool(
    "segments",
    False,
    "eval/predict on the 2019 segment task (frame-level data with segment fields): eval writes "
    "MAP@100,000 over rated segments to WORKDIR/eval/segments_step_<N>.json, predict the Kaggle "
    "Class,Segments CSV over the segment vocabulary (config.data.segment_classes).",
)
flags.DEFINE_integer("step", None, "eval/predict: the checkpoint step (default: the latest).")
flags.DEFINE_string("output", None, "predict: CSV path (default WORKDIR/predictions_step_<N>.csv).")
flags.DEFINE_bool(
    "top_k_jsonl", False, "predict: also write the top 20 with class names as JSON lines."
)
flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process: HOST:PORT of process 0's coordinator (with --num_processes and "
    "--process_id). Not needed on SLURM or Cloud TPU, where JAX reads the environment.",
)
flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes in all.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS
_CHATTY_LIBRARIES = ("/orbax/", "/grain/", "/jax/")


class _QuietLibraries(std_logging.Filter):
    """Keeps libraries' INFO chatter (orbax logs each save in ~20 lines) off the console."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or not any(
            lib in record.pathname for lib in _CHATTY_LIBRARIES
        )


def initialize_distributed() -> None:
    """jax.distributed.initialize() where the flags or the environment ask for it."""
    explicit = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
    if any(x is not None for x in explicit) and any(x is None for x in explicit):
        raise app.UsageError("--coordinator_address, --num_processes and --process_id go together")
    distributed.initialize(*explicit)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    initialize_distributed()
    import jax

    # Only process 0 talks; the others say only what goes wrong.
    logging.set_verbosity(logging.INFO if jax.process_index() == 0 else logging.WARNING)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if jax.process_count() > 1:
        logging.info(
            "jax.distributed: process %d of %d, %d local of %d devices",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )
    from vmjax.train import loop  # after flag parsing: importing JAX code is slow

    task = FLAGS.config.get("task", "classify")
    if task == "audiovisual":
        _audiovisual()
        return
    retrieval = task == "retrieval"
    if retrieval or FLAGS.mode == "retrieve":
        _retrieval(retrieval)
        return
    if FLAGS.segments and FLAGS.mode == "train":
        raise app.UsageError("--segments goes with --mode eval or --mode predict")
    if FLAGS.segments:
        from vmjax.train import segment_inference

        if FLAGS.mode == "eval":
            result = segment_inference.evaluate_segments(FLAGS.config, FLAGS.workdir, FLAGS.step)
            print("Segment evaluation: " + ", ".join(f"{k} {v}" for k, v in result.items()))
        else:
            path = segment_inference.predict_segments(
                FLAGS.config, FLAGS.workdir, FLAGS.step, FLAGS.output
            )
            print(f"Segment predictions: {path}")
        return
    if FLAGS.mode != "train":
        from vmjax.train import inference

        if FLAGS.mode == "eval":
            result = inference.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.step)
            if jax.process_index() == 0:
                print("Evaluation: " + ", ".join(f"{k} {v}" for k, v in result.items()))
        else:
            path = inference.predict(
                FLAGS.config, FLAGS.workdir, FLAGS.step, FLAGS.output, FLAGS.top_k_jsonl
            )
            print(f"Predictions: {path}")
        return
    result = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if jax.process_index() != 0:
        return
    if result and "preempted_at" in result:
        return  # the loop said where it saved
    if result:
        summary = ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
        )
        print(f"Final evaluation: {summary}")


def _audiovisual() -> None:
    """--mode train of an audio-visual pretraining config (vmjax.train.audiovisual)."""
    if FLAGS.segments or FLAGS.mode != "train":
        raise app.UsageError(
            "an audio-visual pretraining config (task='audiovisual') runs --mode train only; "
            "evaluate its encoders with a probe: configs/audiovisual.py:probe"
        )
    from vmjax.train import audiovisual

    result = audiovisual.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if result:
        print(audiovisual.summary(result))


def _retrieval(is_retrieval_config: bool) -> None:
    """--mode train / retrieve of a retrieval config (vmjax.train.contrastive)."""
    import jax

    if not is_retrieval_config:
        raise app.UsageError(
            "--mode retrieve needs a retrieval config (task='retrieval', e.g. configs/retrieval.py)"
        )
    if FLAGS.segments or FLAGS.mode not in ("train", "retrieve"):
        raise app.UsageError(
            f"a retrieval config runs --mode train or --mode retrieve, not --mode {FLAGS.mode}"
            + (" --segments" if FLAGS.segments else "")
        )
    if FLAGS.mode == "train":
        from vmjax.train import contrastive

        result = contrastive.train_and_evaluate(FLAGS.config, FLAGS.workdir)
        if result and jax.process_index() == 0:
            print(contrastive.summary(result))
        return
    if not FLAGS.query or not FLAGS.query.strip():
        raise app.UsageError("--mode retrieve needs --query TEXT")
    if FLAGS.top_k < 1:
        raise app.UsageError(f"--top_k must be >= 1, got {FLAGS.top_k}")
    from vmjax import retrieval

    found = retrieval.search_text(FLAGS.workdir, FLAGS.query, FLAGS.top_k, config=FLAGS.config)
    if found.all_unknown:
        print(
            f"Note: no word of {FLAGS.query!r} is in the text tower's vocabulary; the query "
            "embeds as [UNK] only, so this ranking says nothing about it."
        )
    elif found.unknown:
        unknown = ", ".join(found.unknown)
        print(f"Note: not in the text tower's vocabulary (read as [UNK]): {unknown}")
    hits = found.hits
    print(
        f"Top {hits.ids.shape[1]} of {found.num_videos} {FLAGS.config.index_split} videos for "
        f"{FLAGS.query!r} (step {found.step}, {FLAGS.config.index_metric}):"
    )
    for rank, (video_id, score, classes) in enumerate(
        zip(hits.ids[0], hits.scores[0], hits.classes[0], strict=True), 1
    ):
        print(f"{rank:3d}. {video_id}  {score:.4f}  {classes}")


if __name__ == "__main__":
    app.run(main)
