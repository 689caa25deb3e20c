"""Starting a classifier from another run's encoders, and keeping modules fixed (probes).

config.init_from.workdir: a run (an audio-visual pretraining run, vmjax.train.audiovisual, or a
  classifier run) whose latest checkpoint's top-level parameter subtrees named in
  config.init_from.modules (e.g. 'rgb,audio': the Multimodal encoders) replace this model's
  freshly initialised ones of the same names, shapes checked. Applied once, when the run starts
  from scratch; a resumed run restores its own checkpoint. None means "required but not given"
  (the probe presets of configs/audiovisual.py) and is an error; '' means no initialisation.
config.freeze: comma-separated top-level parameter subtrees that get no updates (optax
  set_to_zero: no gradient step, no weight decay): 'rgb,audio' with init_from is a linear probe
  of the pretrained encoders, without it a probe of random ones.
config.freeze_steps: > 0 freezes them for the first freeze_steps updates only, then they train
  with the rest (their own AdamW state, gated to zero until then): a linear probe followed by
  fine-tuning in one run (LP-FT, Kumar et al. 2022), so a random head's first gradients do not
  distort the pretrained features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging


def _names(value: str) -> list[str]:
    return [m.strip() for m in (value or "").split(",") if m.strip()]


def frozen_modules(config: ml_collections.ConfigDict) -> list[str]:
    return _names(config.get("freeze", ""))


def init_workdir(config: ml_collections.ConfigDict) -> str:
    """config.init_from.workdir ('' when the run starts from random parameters)."""
    if "init_from" not in config:
        return ""
    workdir = config.init_from.workdir
    if workdir is None:
        raise ValueError(
            "config.init_from.workdir is required by this preset: pass "
            "--config.init_from.workdir=RUN (e.g. an audio-visual pretraining run of "
            "configs/audiovisual.py)"
        )
    return workdir


def freeze(config: ml_collections.ConfigDict, tx: optax.GradientTransformation):
    """`tx` for the trained parameters and set_to_zero for the config.freeze subtrees."""
    names = frozen_modules(config)
    if not names:
        return tx

    def labels(params):
        missing = sorted(set(names) - set(params))
        if missing:
            raise ValueError(
                f"config.freeze names {missing}, which the model does not have; its top-level "
                f"parameters are {sorted(params)}"
            )
        return {
            name: jax.tree.map(lambda _, n=name: "frozen" if n in names else "train", tree)
            for name, tree in params.items()
        }

    steps = int(config.get("freeze_steps", 0))
    if steps < 0:
        raise ValueError(f"config.freeze_steps={steps}; expected >= 0 (0: frozen throughout)")
    frozen = optax.set_to_zero()
    if steps:
        gate = optax.scale_by_schedule(lambda count: jnp.where(count >= steps, 1.0, 0.0))
        frozen = optax.chain(tx, gate)
    return optax.multi_transform({"train": tx, "frozen": frozen}, labels)


def source_params(workdir: str) -> tuple[dict, int, str]:
    """(params, step, absolute workdir) of a run's newest good checkpoint, by its task."""
    from vmjax import run as run_lib
    from vmjax import trained

    source = run_lib.Run.open(workdir)
    task = source.config.get("task", "classify")
    if task == "retrieval":
        raise ValueError(
            f"{source.workdir} is a text-video retrieval run; init_from reads audio-visual "
            "pretraining runs (configs/audiovisual.py) and classifier runs"
        )
    if task != "audiovisual":
        run = trained.load(source.workdir)
        return run.params, run.step, source.workdir
    from vmjax.train import audiovisual
    from vmjax.train.checkpoint import restore_checkpoint

    shapes = jax.eval_shape(audiovisual.setup(source.config)[2].init)
    like = {"params": shapes.params, "step": shapes.step}
    state, step = restore_checkpoint(source.checkpoint_dir, like, partial=True)
    return state["params"], step, source.workdir


def initialize(config: ml_collections.ConfigDict, params: dict) -> dict:
    """`params` with config.init_from.modules taken from config.init_from.workdir's checkpoint."""
    workdir = init_workdir(config)
    if not workdir:
        return params
    names = _names(config.init_from.modules)
    if not names:
        raise ValueError("config.init_from.modules is empty: name the modules to initialise")
    source, step, workdir = source_params(workdir)
    out = dict(params)
    for name in names:
        if name not in source:
            raise ValueError(
                f"{workdir} (step {step}) has no parameters {name!r}; it has {sorted(source)}"
            )
        if name not in params:
            raise ValueError(
                f"config.init_from.modules names {name!r}, which this model does not have; its "
                f"top-level parameters are {sorted(params)}"
            )
        want = jax.tree.map(lambda x: (x.shape, x.dtype), params[name])
        got = jax.tree.map(lambda x: (x.shape, x.dtype), source[name])
        if want != got:
            raise ValueError(
                f"{workdir} (step {step}): the {name!r} parameters do not fit this model (its "
                f"encoder config differs): this model wants {want}, the run has {got}"
            )
        out[name] = source[name]
    logging.info("Initialised %s from %s (step %d)", ", ".join(names), workdir, step)
    return out
