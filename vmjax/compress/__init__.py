"""Model compression as configs of the normal training loop (`config.compress.method`).

prune:   gradual magnitude pruning, an optax transformation after the optimizer (pruning.py).
qat:     int8 quantization-aware training, the model wrapped by qwix (quantization.py).
ptq:     int8 post-training quantization of a trained run, then evaluation (quantization.py).
distill: a student trained on a frozen teacher's soft targets (distillation.py).
"""

from __future__ import annotations

import ml_collections
import optax

METHODS = ("none", "prune", "qat", "ptq", "distill")


def method(config: ml_collections.ConfigDict) -> str:
    """config.compress.method, checked; 'none' for runs saved before the compress block existed."""
    name = config.compress.method if "compress" in config else "none"
    if name not in METHODS:
        raise ValueError(f"config.compress.method={name!r}; expected one of {METHODS}")
    return name


def apply(config: ml_collections.ConfigDict, model, tx: optax.GradientTransformation):
    """(model, tx) of the run: `model` wrapped for QAT, `tx` chained with pruning or a teacher.

    'ptq' trains nothing: the loop quantizes the source run instead (quantization.quantize_run).
    """
    name = method(config)
    if name == "prune":
        c = config.compress
        from vmjax.compress import pruning

        tx = optax.chain(
            tx,
            pruning.magnitude_pruning(
                c.sparsity, c.begin_step, c.end_step, c.update_every, c.prune_regex
            ),
        )
    elif name == "qat":
        from vmjax.compress import quantization

        model = quantization.qat_model(model, config.compress)
    elif name == "distill":
        from vmjax.compress import distillation

        tx = optax.chain(tx, distillation.hold_teacher(distillation.load_teacher(config)))
    return model, tx
