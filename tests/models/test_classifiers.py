"""Classifiers and build_model: the contract the training step relies on."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vmjax.models import MODELS, build_model
from vmjax.models.classifiers import FrameMoE, VideoMoE

NUM_CLASSES, B, T, RGB, AUDIO = 6, 3, 5, 16, 4


def _video_batch(seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        "rgb": jnp.asarray(rng.normal(size=(B, RGB)), jnp.float32),
        "audio": jnp.asarray(rng.normal(size=(B, AUDIO)), jnp.float32),
    }


def _frame_batch(seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    mask = np.ones((B, T), bool)
    mask[1, 3:] = False
    mask[2] = False  # A 0-frame video.
    return {
        "rgb": jnp.asarray(rng.normal(size=(B, T, RGB)), jnp.float32),
        "audio": jnp.asarray(rng.normal(size=(B, T, AUDIO)), jnp.float32),
        "mask": jnp.asarray(mask),
    }


def _batch_for(name: str) -> dict[str, jax.Array]:
    return _frame_batch() if name.startswith("frame") else _video_batch()


def _config(name: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"name": name, "num_mixtures": 2})


# The three MoE/logistic classifiers; the rest of the zoo is tested from its presets in test_zoo.
BASIC = ("frame_moe", "logistic", "moe")


@pytest.mark.parametrize("name", BASIC)
def test_build_model_runs(name):
    model = build_model(_config(name), NUM_CLASSES)
    assert isinstance(model, MODELS[name])
    inputs = _batch_for(name)
    variables = model.init(jax.random.key(0), inputs, train=False)
    logits = model.apply(variables, inputs, train=True)
    assert logits.shape == (B, NUM_CLASSES) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("name", BASIC)
def test_bce_grad_is_finite(name):
    model = build_model(_config(name), NUM_CLASSES)
    inputs = _batch_for(name)
    labels = jnp.asarray(np.random.default_rng(1).random((B, NUM_CLASSES)) < 0.3, jnp.float32)
    params = model.init(jax.random.key(0), inputs, train=False)["params"]
    # Large params push MoE activations where a naive log(p) would give inf/NaN.
    params = jax.tree.map(lambda w: w * 100, params)

    @jax.jit
    def grad_fn(params):
        def loss(params):
            logits = model.apply({"params": params}, inputs, train=True)
            return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

        return jax.grad(loss)(params)

    grads = grad_fn(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="unknown") as err:
        build_model(_config("transformer"), NUM_CLASSES)
    for name in MODELS:
        assert repr(name) in str(err.value)


def test_missing_field_is_an_error():
    with pytest.raises(ValueError, match="num_mixtures"):
        build_model(ml_collections.ConfigDict({"name": "moe"}), NUM_CLASSES)


def test_build_model_passes_hyperparameters():
    config = ml_collections.ConfigDict({"name": "frame_moe", "num_mixtures": 5, "unused": 1})
    model = build_model(config, NUM_CLASSES)
    assert (model.num_classes, model.num_mixtures) == (NUM_CLASSES, 5)


def test_frame_moe_ignores_padded_frames():
    model = FrameMoE(num_classes=NUM_CLASSES, num_mixtures=2)
    inputs = _frame_batch()
    variables = model.init(jax.random.key(0), inputs, train=False)
    # Garbage frames appended with mask False must not change anything.
    extra = 4
    padded = {
        "rgb": jnp.concatenate([inputs["rgb"], jnp.full((B, extra, RGB), 1e6)], axis=1),
        "audio": jnp.concatenate([inputs["audio"], jnp.full((B, extra, AUDIO), -1e6)], axis=1),
        "mask": jnp.concatenate([inputs["mask"], jnp.zeros((B, extra), bool)], axis=1),
    }
    np.testing.assert_allclose(
        model.apply(variables, padded, train=False),
        model.apply(variables, inputs, train=False),
        rtol=1e-6,
        atol=1e-6,
    )


def test_frame_moe_equals_video_moe_on_the_mean():
    frame_model = FrameMoE(num_classes=NUM_CLASSES, num_mixtures=2)
    video_model = VideoMoE(num_classes=NUM_CLASSES, num_mixtures=2)
    inputs = _frame_batch()
    variables = frame_model.init(jax.random.key(0), inputs, train=False)
    mask = np.asarray(inputs["mask"])
    means = {}
    for key in ("rgb", "audio"):
        x = np.asarray(inputs[key])
        empty = np.zeros_like(x[0, 0])
        means[key] = np.stack([x[i][mask[i]].mean(0) if mask[i].any() else empty for i in range(B)])
    np.testing.assert_allclose(
        frame_model.apply(variables, inputs, train=False),
        video_model.apply(variables, means, train=False),
        rtol=1e-5,
        atol=1e-5,
    )


def test_frame_moe_zero_frame_video_is_finite():
    model = FrameMoE(num_classes=NUM_CLASSES, num_mixtures=2)
    inputs = _frame_batch()
    inputs["mask"] = jnp.zeros((B, T), bool)
    variables = model.init(jax.random.key(0), inputs, train=False)
    assert bool(jnp.all(jnp.isfinite(model.apply(variables, inputs, train=False))))
