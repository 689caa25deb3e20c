"""A trained classifier for inference: its model and variables, restored from shapes.

Evaluation, prediction, export, analysis, feature extraction, distillation teachers,
post-training quantization and `init_from` all load runs here. The parameters' template comes
from `jax.eval_shape` of the model's init (nothing is initialised only to be overwritten), and
only the parameters, the model's other collections and the step are read from the checkpoint:
never the optimizer state, whatever optimizer, pruning or teacher the run trained with.

The model is the plain one its config describes; a quantization-aware run's parameters are the
same tree, and callers that want its fake-quantized forward pass wrap it (vmjax.compress).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from vmjax import run as run_lib
from vmjax.data import pipeline
from vmjax.data.device import model_inputs
from vmjax.errors import RunDirectoryError
from vmjax.train import checkpoint

# What a config may differ in from the run's stored one and still describe its checkpoints.
_MUST_MATCH = ("model", "data.num_classes", "data.level", "data.max_frames", "data.num_frames")


@dataclasses.dataclass
class Trained:
    """A restored run: its directory, config, model and variables of checkpoint `step`."""

    run: run_lib.Run
    config: ml_collections.ConfigDict
    model: nn.Module
    params: Any
    model_state: dict
    step: int

    @property
    def variables(self) -> dict:
        return {"params": self.params, **self.model_state}


def example_inputs(config: ml_collections.ConfigDict, batch_size: int = 1) -> dict:
    """Zero model inputs of the shapes a batch of `config.data` gives."""
    return model_inputs(pipeline.config_example_batch(config.data, batch_size))


def variable_shapes(model: nn.Module, config: ml_collections.ConfigDict) -> dict:
    """The model's variables as ShapeDtypeStructs (jax.eval_shape: nothing is computed)."""
    inputs = example_inputs(config)
    return dict(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), inputs, train=False)))


def check_config(
    config: ml_collections.ConfigDict,
    stored: ml_collections.ConfigDict,
    workdir: str,
    must_match: tuple[str, ...] = (),
    advice: str = "leave --config out, or pass the run's",
) -> None:
    """RunDirectoryError when `config` describes other checkpoints than the run's `stored`:
    they differ under a key of `must_match` (default: a classifier's, `_MUST_MATCH`)."""
    must_match = must_match or _MUST_MATCH
    diff = run_lib.changes(run_lib.config_json(stored), run_lib.config_json(config))
    bad = [k for k in diff if any(k == p or k.startswith(p + ".") for p in must_match)]
    if bad:
        listed = ", ".join(f"{k}: {diff[k][0]!r} (run) vs {diff[k][1]!r}" for k in bad[:4])
        raise RunDirectoryError(
            f"the config differs from the run's in {listed}; {workdir}'s checkpoints were "
            f"trained with the run's own config ({advice})"
        )


def load(
    workdir: str,
    step: int | None = None,
    config: ml_collections.ConfigDict | None = None,
    *,
    sharding: jax.sharding.Sharding | None = None,
) -> Trained:
    """Restores checkpoint `step` (default: the newest good one) of a classifier run.

    config: default the run's own (vmjax.run: config.json with its recorded changes); another
      config must agree on what shapes the checkpoints (`_MUST_MATCH`).
    sharding: where the arrays go (default: the first device).
    """
    from vmjax.models import build_model

    run = run_lib.Run.open(workdir)
    task = run.config.get("task", "classify")
    if task != "classify":
        raise RunDirectoryError(
            f"{run.workdir} is a {task!r} run; this command reads classifier runs"
        )
    if config is None:
        config = run.config
    else:
        check_config(config, run.config, run.workdir)
    if "compress" in config and config.compress.method == "ptq":
        # A PTQ run holds its source run's float parameters: that run's model.
        source = run_lib.Run.open(config.compress.source_workdir).config
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.model = source.model
    model = build_model(config.model, config.data.num_classes)
    shapes = variable_shapes(model, config)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = {
        "params": shapes.pop("params"),
        "model_state": shapes,
        "step": jax.ShapeDtypeStruct((), np.int32),
    }
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), like)
    state, step = checkpoint.restore_checkpoint(run.checkpoint_dir, like, step, partial=True)
    return Trained(run, config, model, state["params"], dict(state["model_state"]), step)
