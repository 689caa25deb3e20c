"""vmjax entry point: flags -> a command from vmjax.commands' (task, mode) table.

python -m vmjax.main --config configs/yt8m.py --workdir /tmp/w
python -m vmjax.main --config configs/yt8m.py:smoke --workdir /tmp/w --config.batch_size=64
python -m vmjax.main --config configs/retrieval.py:smoke --workdir /tmp/r [--mode retrieve \
    --query "guitar solo on stage" --top_k 10]
python -m vmjax.main --config configs/audiovisual.py:smoke --workdir /tmp/av

Multi-host: on a SLURM job or a Cloud TPU VM slice jax.distributed is initialised from the
environment; elsewhere pass --coordinator_address, --num_processes and --process_id (see
launch/local.sh). Only process 0 logs, writes metrics and shows progress.
"""

from absl import app, flags

from vmjax import cli, commands, distributed
from vmjax.configs_check import validate

cli.define_config_flag()
flags.adopt_module_key_flags(cli)  # --config (and --debug) in this command's --help
flags.DEFINE_string(
    "workdir",
    None,
    "Run directory (vmjax.run): config.json, history.jsonl, metrics.jsonl, checkpoints/, "
    "tensorboard/. Running again with the same workdir resumes from its newest good checkpoint.",
)
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "predict", "retrieve"],
    "train: train, evaluating every config.eval_every steps. eval: metrics of a checkpoint "
    "(--step, default the latest) into WORKDIR/eval/. predict: the Kaggle CSV for the eval data. "
    "retrieve (retrieval runs): the --top_k videos nearest to --query.",
)
flags.DEFINE_list(
    "allow_config_change",
    [],
    "train on an existing run: config keys that may differ from its stored config (recorded in "
    "WORKDIR/history.jsonl). How long and how often to train, log, evaluate and save may always "
    "change; the model, data level/classes, batch size and seed never (use a new workdir).",
)
flags.DEFINE_string("query", None, "retrieve: the text to search the videos for.")
flags.DEFINE_integer("top_k", 10, "retrieve: how many videos to print.")
flags.DEFINE_bool("segments", False, "eval/predict on the 2019 segment task (frame-level data).")
flags.DEFINE_integer("step", None, "eval/predict: the checkpoint step (default: the latest).")
flags.DEFINE_string("output", None, "predict: CSV path (default WORKDIR/predictions_step_<N>.csv).")
flags.DEFINE_bool("top_k_jsonl", False, "predict: also write the top 20 with class names as JSONL.")
flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes in all.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    explicit = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
    if any(x is not None for x in explicit) and any(x is None for x in explicit):
        raise app.UsageError("--coordinator_address, --num_processes and --process_id go together")
    command = commands.lookup(FLAGS.config.get("task", "classify"), FLAGS.mode, FLAGS.segments)
    distributed.initialize(*explicit)  # before anything touches the JAX backend
    cli.setup_logging()
    import jax

    validate(FLAGS.config, num_devices=jax.device_count())  # before any work
    command(
        commands.Args(
            config=FLAGS.config,
            workdir=FLAGS.workdir,
            step=FLAGS.step,
            output=FLAGS.output,
            top_k_jsonl=FLAGS.top_k_jsonl,
            segments=FLAGS.segments,
            query=FLAGS.query,
            top_k=FLAGS.top_k,
            allow_config_change=tuple(FLAGS.allow_config_change),
        )
    )


if __name__ == "__main__":
    cli.run(main)
