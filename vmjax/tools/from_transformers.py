"""A transformers video classifier folder -> a vmjax run directory at step 0.

  python -m vmjax.tools.from_transformers --folder vivit-b-16x2-kinetics400 \\
      --workdir runs/vivit_b_k400 [--config vivit_k400 --config.data.eval_pattern=...]

Reads a `save_pretrained` folder (config.json, model.safetensors, and preprocessor_config.json
where present) of a VivitForVideoClassification or VideoMAEForVideoClassification without
transformers (vmjax.models.from_transformers), and writes a run through vmjax.run:

- config.json: the base config (--config, default vivit_pixels, with its overrides) whose
  `model` section is replaced by the converted model's ('vivit_pixels': Model 1 with joint
  positions and CLS pooling; 'videomae_pixels'), with pixel_mean / pixel_std equal to the
  processor's rescaling and normalization; data.num_frames, data.image_size and
  data.num_classes from the checkpoint; init_from (empty, modules = the encoder) and freeze
  added where the base config lacks them, so a fine-tuning run can start from this one;
- checkpoints/0/: the train state of that config with the checkpoint's parameters (and a fresh
  optimizer state), written by the project's Checkpointer (manifest and all).

`--mode eval|predict` (with `--config run:WORKDIR`), init_from and vmjax.extract then read it
as any trained run; `--mode train` on it continues from step 0 with the same classes (the
checkpoint has no input-pipeline state, which at step 0 is the fresh pipeline's). Other
classes: a new workdir with init_from. README: "Public checkpoints from transformers".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import ml_collections
from absl import flags

from vmjax import cli
from vmjax.errors import RunDirectoryError, UserError

DEFAULT_CONFIG = "vivit_pixels"


def define_flags() -> None:
    """The command's flags, defined when it runs (importing convert_folder defines none)."""
    flags.DEFINE_string(
        "folder", None, "A transformers save_pretrained folder (config.json + model.safetensors)."
    )
    flags.DEFINE_string("workdir", None, "The run directory to create (new or empty).")
    cli.define_config_flag(
        help_string=(
            f"Base config whose data, optimizer and loop settings the run keeps (default "
            f"{DEFAULT_CONFIG}); its model section is replaced. " + cli.CONFIG_HELP
        )
    )
    flags.adopt_module_key_flags(cli)  # --debug in --help


def run_config(
    base: ml_collections.ConfigDict, converted, folder: str
) -> ml_collections.ConfigDict:
    """`base` with the converted model's section and the checkpoint's clip shape and classes."""
    task = base.get("task", "classify")
    if task != "classify" or base.data.get("format") != "video_files" or "compress" in base:
        raise UserError(
            f"--config is a {task!r} config with data.format={base.data.get('format')!r}"
            f"{' and compress' if 'compress' in base else ''}; the converted classifier reads "
            "decoded videos: use a pixel classifier config (vivit_pixels, vivit_k400)"
        )
    height, width = converted.image_size
    if height != width:
        raise UserError(
            f"{folder}: image_size is {height}x{width}; vmjax's video pipeline reads square "
            "frames (data.image_size), so only square checkpoints convert to a run"
        )
    config = base.copy_and_resolve_references()
    with config.unlocked():
        config.model = ml_collections.ConfigDict(converted.model)
        config.data.num_frames = converted.num_frames
        config.data.image_size = height
        config.data.num_classes = converted.num_classes
        if "init_from" not in config:
            config.init_from = ml_collections.ConfigDict(
                {"workdir": "", "modules": converted.encoder}
            )
        if "freeze" not in config:
            config.freeze = ""
    return config


def convert_folder(
    folder: str,
    workdir: str,
    base: ml_collections.ConfigDict | None = None,
    *,
    log: Callable[[str], None] = print,
) -> dict:
    """Writes the run directory `workdir` for the transformers checkpoint in `folder`.

    base: the config whose non-model sections the run keeps (default vivit_pixels). Returns a
    summary (architecture, model name, parameters, classes, workdir).
    """
    folder = os.path.abspath(os.path.expanduser(folder))
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if not os.path.isdir(folder):
        raise UserError(
            f"--folder {folder} does not exist; expected a transformers save_pretrained folder "
            "(config.json + model.safetensors)"
        )
    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise RunDirectoryError(
            f"--workdir {workdir} exists and is not empty; the converted run needs a new (or "
            "empty) directory"
        )
    # Imported past the door: a wrong folder or workdir is refused in a moment.
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vmjax import configs
    from vmjax import run as run_lib
    from vmjax.configs_check import ConfigError, validate
    from vmjax.models import from_transformers
    from vmjax.train import checkpoint, pretrained, setup
    from vmjax.train.state import TrainState, make_optimizer

    base = configs.get_config(DEFAULT_CONFIG) if base is None else base
    try:
        # The architecture before the weights: another model's folder is refused at once.
        architecture = from_transformers.architecture_of(from_transformers.read_config(folder))
        log(f"Reading {folder} ({architecture})")
        hf_config, state_dict = from_transformers.load_folder(folder)
        processor = from_transformers.load_processor(folder)
        log(f"Converting {len(state_dict)} tensors")
        converted = from_transformers.for_registry(hf_config, state_dict, processor)
    except ValueError as e:
        raise UserError(f"{folder}: {e}") from None
    del state_dict
    config = run_config(base, converted, folder)
    try:
        validate(config)
    except ConfigError as e:
        raise UserError(
            f"the run's config (--config with this checkpoint's model, {converted.num_classes} "
            f"classes, {converted.num_frames}-frame clips) is refused: {e}"
        ) from None

    params = jax.tree.map(jnp.asarray, converted.params)
    tx = pretrained.freeze(config, make_optimizer(config.optimizer, config.num_train_steps))
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state={},
        # The key a run of this config starts with (create_train_state's first split).
        rng=jax.random.split(jax.random.PRNGKey(config.seed))[0],
    )
    # What a run of this config checkpoints: the registry model must hold exactly these arrays.
    like = jax.eval_shape(lambda: setup.init_run(config)[2])
    got, want = (
        jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), tree) for tree in (state, like)
    )
    if got != want:
        raise AssertionError(f"converted state differs from {config.model.name}'s: {got} vs {want}")
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

    resolved = {
        "from_transformers": {
            "folder": folder,
            "architecture": architecture,
            "preprocessor_config": processor is not None,
            "labels": converted.labels,
        }
    }
    labels = converted.labels
    if labels and config.data.get("csv_layout") == "kinetics" and labels != sorted(labels):
        log(
            "Warning: the checkpoint numbers its classes in id2label's order, which is not "
            "sorted by name; vmjax's Kinetics reader numbers them by sorted name, so metrics "
            "on Kinetics CSVs would compare different classes"
        )
    with run_lib.training(config, workdir, resolved) as run:
        log(f"Writing {run.workdir}: {config.model.name}, {num_params:,} parameters")
        ckpt = checkpoint.Checkpointer(run.checkpoint_dir, keep=config.keep_checkpoints)
        ckpt.save(0, state)
        ckpt.close()
    log(
        f"Done: {workdir} (step 0). Clips of {config.data.num_frames} frames of "
        f"{config.data.image_size}x{config.data.image_size}, {config.data.num_classes} classes, "
        f"pixel_mean {tuple(config.model.pixel_mean)}, pixel_std {tuple(config.model.pixel_std)}.\n"
        f"  eval:      python -m vmjax.main --config run:{workdir} --workdir {workdir} "
        "--mode eval [--config.data.eval_pattern=CSV]\n"
        f"  fine-tune: python -m vmjax.main --config run:{workdir} --workdir NEW_RUN "
        f"--config.init_from.workdir={workdir} --config.init_from.modules={converted.encoder} "
        "--config.data.num_classes=N --config.data.train_pattern=CSV ...\n"
        f"  features:  python -m vmjax.extract --workdir {workdir} --videos CSV --out DIR"
    )
    return {
        "architecture": architecture,
        "model": config.model.name,
        "num_params": num_params,
        "num_classes": converted.num_classes,
        "workdir": workdir,
    }


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; see --help")
    folder, workdir = flags.FLAGS.folder, flags.FLAGS.workdir
    if not folder or not workdir:
        raise UserError("--folder and --workdir are required; see --help")
    cli.setup_logging()
    convert_folder(folder, workdir, flags.FLAGS.config, log=lambda s: print(s, file=sys.stderr))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
