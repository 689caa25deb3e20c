"""The classifier run's model, optimizer and initial state, as its config describes them."""

from __future__ import annotations

import jax
import ml_collections

from vmjax.train.state import create_train_state, make_optimizer


def init_run(config: ml_collections.ConfigDict):
    """(model, optimizer, initial TrainState) of the run `config` describes, seeded by it.

    The state's structure is what a checkpoint of that run holds, so it also serves as the
    template to restore one into. `config.compress` may wrap the model (qat) or chain the
    optimizer (prune, distill: the latter loads the teacher run); see vmjax.compress.
    `config.freeze` keeps modules fixed (vmjax.train.pretrained); `config.init_from` is applied
    by the training loop, not here.
    """
    from vmjax import compress
    from vmjax.data import pipeline
    from vmjax.data.device import model_inputs
    from vmjax.models import build_model
    from vmjax.train import pretrained

    model = build_model(config.model, config.data.num_classes)
    tx = pretrained.freeze(config, make_optimizer(config.optimizer, config.num_train_steps))
    model, tx = compress.apply(config, model, tx)
    inputs = model_inputs(pipeline.config_example_batch(config.data))
    return model, tx, create_train_state(model, tx, inputs, jax.random.PRNGKey(config.seed))
