"""A run's own stored config: `--config run:RUN_DIR`, for commands on a run made elsewhere.

  python -m vmjax.main --config run:runs/vivit_b --workdir runs/vivit_b --mode eval \\
      --config.data.eval_pattern=k400/val.csv --config.data.video_root=k400
  python -m vmjax.main --config run:runs/vivit_b --workdir runs/finetuned \\
      --config.data.num_classes=20 --config.data.train_pattern=mine/train.csv \\
      --config.data.eval_pattern=mine/val.csv \\
      --config.init_from.workdir=runs/vivit_b --config.init_from.modules=vivit

The config is the one vmjax.run stores for the run (config.json with its recorded changes):
e.g. a checkpoint converted from transformers (vmjax.tools.from_transformers), whose model
section no shipped config has. Any field can be overridden as with a config file.
"""

import ml_collections

# What the argument after the colon names: no bare form, no presets (tools iterating the shipped
# configs, like tests/tools/test_summary.py, test this one through a run they make).
ARGUMENT = "RUN_DIR"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if not arg:
        raise ValueError("name the run directory after the colon: --config run:RUN_DIR")
    from vmjax import run as run_lib  # the owner of run directories reads config.json

    return run_lib.Run.open(arg).config
