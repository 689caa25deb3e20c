"""int8 quantization with qwix: quantization-aware training (QAT) and post-training (PTQ).

Both quantize the same ops: every `dot_general` / `einsum` / `conv` with a parameter operand in
modules whose path matches `compress.quantize_regex` (a qwix QuantizationRule). Weights get
symmetric per-output-channel scales, scale = max|w| / 127.5 over the contracted axis,
q = round(w / scale) stored as int8; activations (if `compress.act_dtype`) are quantized on the
fly with per-row absmax scales, so the matmul itself runs on int8 operands.

QAT (`qat_model`): qwix's QtProvider fake-quantizes in the forward pass (straight-through
gradients); the parameters stay float32, so checkpoints and the optimizer are unchanged.
PTQ (`quantize`): qwix's PtqProvider model and `qwix.quantize_params` turn float parameters
(from a float or a QAT run) into a tree whose quantized kernels are `WithAux(QArray(qvalue
int8, scale float32))`; the PTQ model computes from those directly.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import qwix

QTYPES = {"int8": jnp.int8, "int4": jnp.int4}


def _qtype(name: str, field: str):
    if name not in QTYPES:
        raise ValueError(f"config.compress.{field}={name!r}; expected one of {sorted(QTYPES)}")
    return QTYPES[name]


def rules(compress: ml_collections.ConfigDict, *, training: bool) -> list:
    """The qwix rules of `compress`: weights (and activations unless act_dtype is '')."""
    kwargs = dict(
        module_path=compress.quantize_regex,
        weight_qtype=_qtype(compress.weight_dtype, "weight_dtype"),
        act_qtype=_qtype(compress.act_dtype, "act_dtype") if compress.act_dtype else None,
    )
    return [qwix.QtRule(**kwargs) if training else qwix.QuantizationRule(**kwargs)]


def qat_model(model, compress: ml_collections.ConfigDict):
    """`model` with fake-quantized matmuls in the forward pass (same parameters as `model`)."""
    return qwix.quantize_model(model, qwix.QtProvider(rules(compress, training=True)))


def ptq_model(model, compress: ml_collections.ConfigDict):
    """`model` computing from int8 parameters made by `quantize`."""
    return qwix.quantize_model(model, qwix.PtqProvider(rules(compress, training=False)))


def quantize(model, params: Any, example_inputs: dict, compress: ml_collections.ConfigDict):
    """(PTQ model, quantized params) of a float model's `params`.

    The PTQ model's abstract init (no weights computed) says which kernels qwix quantizes and
    how; `qwix.quantize_params` then quantizes exactly those.
    """
    qmodel = ptq_model(model, compress)
    abstract = jax.eval_shape(
        lambda: qmodel.init(jax.random.PRNGKey(0), example_inputs, train=False)
    )
    return qmodel, qwix.quantize_params(params, abstract["params"])


def is_quantized(x) -> bool:
    return isinstance(x, qwix.QArray)


def storage_arrays(params: Any) -> dict[str, np.ndarray]:
    """'/'-joined path -> array of a (possibly quantized) params tree, as stored on disk.

    A quantized kernel becomes `<path>.qvalue` (int8) and `<path>.scale` (float32).
    """
    out = {}
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_quantized)
    for path, x in flat:
        name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        name = name.replace("/array", "")  # WithAux.array: part of qwix's wrapper, not the model
        if is_quantized(x):
            out[f"{name}.qvalue"] = np.asarray(x.qvalue)
            out[f"{name}.scale"] = np.asarray(x.scale)
            if x.zero_point is not None:
                out[f"{name}.zero_point"] = np.asarray(x.zero_point)
        else:
            out[name] = np.asarray(x)
    return out


def save(path: str, params: Any) -> int:
    """Writes `storage_arrays(params)` as an uncompressed .npz; returns its size in bytes."""
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **storage_arrays(params))
    return os.path.getsize(path)


def quantize_run(config: ml_collections.ConfigDict):
    """(PTQ model, quantized params, model_state, step, the source run) of source_workdir.

    The model is built from the source run's config (vmjax.trained, parameters restored from
    shapes), the evaluation data from `config`.
    """
    from vmjax import trained

    c = config.compress
    if not c.source_workdir:
        raise ValueError("config.compress.method='ptq' needs config.compress.source_workdir")
    source = trained.load(c.source_workdir)
    if source.config.data.num_classes != config.data.num_classes:
        raise ValueError(
            f"{source.run.workdir}: data.num_classes={source.config.data.num_classes}; "
            f"this run evaluates {config.data.num_classes} classes"
        )
    inputs = trained.example_inputs(source.config)
    qmodel, qparams = quantize(source.model, source.params, inputs, c)  # float, unwrapped model
    return qmodel, qparams, source.model_state, source.step, source


def deployed(config: ml_collections.ConfigDict, model, params: Any, example_inputs: dict):
    """(model, params) of a run as it is evaluated and exported: int8 (PTQ) parameters for
    'qat' and 'ptq' runs, whose checkpoints hold float ones; the float model otherwise."""
    method = config.compress.method if "compress" in config else "none"
    if method not in ("qat", "ptq"):
        return model, params
    return quantize(model, params, example_inputs, config.compress)
