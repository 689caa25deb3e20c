"""vmjax entry point: flags only; the work happens in vmjax.train.loop.

python -m vmjax.main --config configs/yt8m.py --workdir /tmp/w
python -m vmjax.main --config configs/yt8m.py:smoke --workdir /tmp/w --config.batch_size=64
"""

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

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
    "mode", "train", ["train"], "train: train, evaluating every config.eval_every steps."
)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS
_CHATTY_LIBRARIES = ("/orbax/", "/grain/", "/jax/")


class _QuietLibraries(std_logging.Filter):
    """Keeps libraries' INFO chatter (orbax logs each save in ~20 lines) off the console."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or not any(
            lib in record.pathname for lib in _CHATTY_LIBRARIES
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    from vmjax.train import loop  # after flag parsing: importing JAX code is slow

    result = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if result:
        summary = ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
        )
        print(f"Final evaluation: {summary}")


if __name__ == "__main__":
    app.run(main)
