"""int8 with qwix: stored dtypes, the quantized numbers against numpy, closeness, QAT training."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vmjax.compress import quantization
from vmjax.models import build_model
from vmjax.train import state as state_lib
from vmjax.train.step import train_step

COMPRESS = ml_collections.ConfigDict(
    {"quantize_regex": ".*", "weight_dtype": "int8", "act_dtype": "int8"}
)


def _inputs(rng, n=16):
    return {
        "rgb": jnp.asarray(rng.normal(size=(n, 1024)), jnp.float32),
        "audio": jnp.asarray(rng.normal(size=(n, 128)), jnp.float32),
    }


def _quantize_dequantize(x, axis):
    """Symmetric absmax int8 along `axis` (numpy): scale = max|x| / 127.5, q = round(x / scale)."""
    scale = np.abs(x).max(axis=axis, keepdims=True) / 127.5
    q = np.clip(np.round(x / scale), -128, 127)
    return q * scale, scale


def test_ptq_stores_int8_kernels_and_computes_the_int8_equation():
    rng = np.random.default_rng(0)
    model = build_model(ml_collections.ConfigDict({"name": "logistic"}), 12)
    x = _inputs(rng)
    params = model.init(jax.random.PRNGKey(0), x, train=False)["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jnp.asarray(rng.normal(size=p.shape)), params)
    qmodel, qparams = quantization.quantize(model, params, x, COMPRESS)

    kernel = qparams["head"]["logits"]["kernel"].array
    assert kernel.qvalue.dtype == jnp.int8 and kernel.qvalue.shape == (1152, 12)
    assert kernel.scale.dtype == jnp.float32 and kernel.scale.shape == (1, 12)  # per class
    assert qparams["head"]["logits"]["bias"].dtype == jnp.float32  # biases stay float
    stored = quantization.storage_arrays(qparams)
    assert stored["head/logits/kernel.qvalue"].dtype == np.int8
    assert sorted(stored) == [
        "head/logits/bias",
        "head/logits/kernel.qvalue",
        "head/logits/kernel.scale",
    ]

    w = np.asarray(params["head"]["logits"]["kernel"], np.float64)
    w_dq, w_scale = _quantize_dequantize(w, axis=0)
    np.testing.assert_allclose(np.asarray(kernel.scale), w_scale, rtol=1e-6)
    q = np.asarray(kernel.qvalue, np.int64)
    near_tie = np.abs(np.abs(w / w_scale) % 1 - 0.5) < 1e-3
    agree = q == np.clip(np.round(w / w_scale), -128, 127)
    assert (agree | near_tie).all() and agree.mean() > 0.999
    assert np.abs(q - np.round(w / w_scale)).max() <= 1

    # The PTQ model's logits: activations quantized per row, int8 x int8 matmul, rescaled. XLA's
    # division may land a value within 1e-3 of a .5 tie on the other side, so the reference
    # allows those activations one step either way.
    feats = np.concatenate([np.asarray(x["rgb"]), np.asarray(x["audio"])], 1).astype(np.float64)
    x_dq, x_scale = _quantize_dequantize(feats, axis=1)
    x_near = np.abs(np.abs(feats / x_scale) % 1 - 0.5) < 1e-3
    slack = x_scale * (x_near @ np.abs(q * w_scale))
    b = np.asarray(params["head"]["logits"]["bias"], np.float64)
    want = x_dq @ (q * w_scale) + b
    got = np.asarray(qmodel.apply({"params": qparams}, x, train=False), np.float64)
    assert (np.abs(got - want) <= slack + 1e-4 * (1 + np.abs(want))).all()
    assert x_near.mean() < 0.01  # the slack covers a few activations, not the test

    # Against float: |dz| <= sum_i |x_i||dw_i| + |dx_i||w_i| + |dx_i||dw_i| (rounding bounds), and
    # sigmoid's slope is at most 1/4, so the scores may move by a quarter of that at most.
    dx, dw = np.abs(x_dq - feats), np.abs(w_dq - w)
    bound = np.abs(feats) @ dw + dx @ np.abs(w) + dx @ dw
    z = feats @ w + b
    assert (np.abs(got - z) <= bound + 1e-4).all()
    score_gap = np.abs(jax.nn.sigmoid(got) - jax.nn.sigmoid(z))
    assert 0 < score_gap.max() <= bound.max() / 4 + 1e-5


def test_ptq_moe_scores_stay_within_0_01_of_float():
    # 1152 inputs: per-weight rounding error <= scale / 2 ~ max|w| / 255 of a column, summed with
    # random signs over 1152 terms, moves a logit by ~0.01-0.05 here; a score by a quarter of it.
    rng = np.random.default_rng(1)
    model = build_model(ml_collections.ConfigDict({"name": "moe", "num_mixtures": 2}), 20)
    x = _inputs(rng, 32)
    params = model.init(jax.random.PRNGKey(1), x, train=False)["params"]
    qmodel, qparams = quantization.quantize(model, params, x, COMPRESS)
    for name in ("gates", "experts"):
        assert qparams["head"][name]["kernel"].array.qvalue.dtype == jnp.int8
    f = jax.nn.sigmoid(model.apply({"params": params}, x, train=False))
    q = jax.nn.sigmoid(qmodel.apply({"params": qparams}, x, train=False))
    gap = np.abs(np.asarray(q) - np.asarray(f))
    assert 0 < gap.max() < 0.01


def test_qat_fake_quantizes_and_trains():
    rng = np.random.default_rng(2)
    base = build_model(ml_collections.ConfigDict({"name": "moe", "num_mixtures": 2}), 10)
    model = quantization.qat_model(base, COMPRESS)
    opt = ml_collections.ConfigDict(
        {
            "learning_rate": 0.02,
            "warmup_steps": 0,
            "end_learning_rate_factor": 1.0,
            "weight_decay": 0.0,
            "clip_norm": 1.0,
        }
    )
    tx = state_lib.make_optimizer(opt, 100)
    x = _inputs(rng, 32)
    state = state_lib.create_train_state(model, tx, x, jax.random.PRNGKey(0))
    # Same float parameters as the plain model; the forward pass differs by the int8 rounding.
    variables = {"params": state.params}
    fake = model.apply(variables, x, train=False)
    exact = base.apply(variables, x, train=False)
    assert 0 < float(jnp.abs(fake - exact).max()) < 0.1

    labels = np.zeros((32, 10), np.uint8)
    labels[np.arange(32), rng.integers(0, 10, 32)] = 1
    rgb = np.asarray(x["rgb"]) + labels.argmax(1)[:, None] * 0.1
    batch = {"rgb": rgb, "audio": x["audio"], "labels": labels, "weights": np.ones(32, np.float32)}
    step = jax.jit(functools.partial(train_step, model=model, tx=tx))
    losses = []
    for _ in range(25):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]
