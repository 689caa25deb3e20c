"""The ResNet frame encoder and the CNN+LSTM pixel classifier, on tiny generated videos."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vmjax.models import PIXEL_MODELS, build_model
from vmjax.models.classifiers import CnnLstm
from vmjax.models.cnn import IMAGENET_MEAN, IMAGENET_STD, BasicBlock, ResNet, normalize_pixels

NUM_CLASSES, B, T, SIZE = 2, 4, 3, 32
CNN = {"stage_sizes": (1, 1), "width": 4, "norm": "group", "num_groups": 2}


def _model(**cnn) -> CnnLstm:
    config = ml_collections.ConfigDict(
        {
            "name": "cnn_lstm",
            "num_mixtures": 2,
            "hidden_size": 8,
            "num_layers": 1,
            "cnn": CNN | cnn,
        }
    )
    return build_model(config, NUM_CLASSES)


def _pixels(seed: int = 0, batch: int = B) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, T, SIZE, SIZE, 3), np.uint8)


MASK = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], bool)  # 3, 2, 1 and 0 frames


@functools.cache
def _group_model():
    """The GroupNorm model, its initial variables and a jitted eval forward (compiled once)."""
    model = _model()
    inputs = {"pixels": _pixels(), "mask": MASK}
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), inputs)
    forward = jax.jit(functools.partial(model.apply, train=False))
    return model, variables, forward


# --- An independent reference: convolution and the norms written in numpy (float64). ---


def _np_conv(x: np.ndarray, kernel: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Cross-correlation of `x: [N, H, W, I]` with `kernel: [k, k, I, O]`, zero padding `pad`."""
    k = kernel.shape[0]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h = (x.shape[1] + 2 * pad - k) // stride + 1
    out_w = (x.shape[2] + 2 * pad - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            rows = xp[:, i : i + stride * (out_h - 1) + 1 : stride]
            taps = rows[:, :, j : j + stride * (out_w - 1) + 1 : stride]
            out += taps @ kernel[i, j]
    return out


def _np_group_norm(x: np.ndarray, groups: int, scale, bias, eps: float = 1e-5) -> np.ndarray:
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def _np_batch_norm(x: np.ndarray, scale, bias, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + eps) * scale + bias


@pytest.mark.parametrize(
    "norm, strides, in_channels",
    [("group", 2, 2), ("group", 1, 4), ("batch", 2, 2)],
)
def test_basic_block_matches_numpy(norm, strides, in_channels):
    features, groups = 4, 2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 6, in_channels)).astype(np.float32)

    def norm_params(c):
        return {
            "scale": (1 + 0.3 * rng.normal(size=c)).astype(np.float32),
            "bias": (0.3 * rng.normal(size=c)).astype(np.float32),
        }

    params = {
        "conv1": {"kernel": rng.normal(size=(3, 3, in_channels, features)).astype(np.float32)},
        "norm1": norm_params(features),
        "conv2": {"kernel": rng.normal(size=(3, 3, features, features)).astype(np.float32)},
        "norm2": norm_params(features),
    }
    projects = strides != 1 or in_channels != features
    if projects:
        params["shortcut_conv"] = {
            "kernel": rng.normal(size=(1, 1, in_channels, features)).astype(np.float32)
        }
        params["shortcut_norm"] = norm_params(features)

    block = BasicBlock(features, strides=strides, norm=norm, num_groups=groups)
    variables = {"params": params}
    if norm == "batch":
        # Training mode normalises by the statistics of this batch, which the reference uses.
        ones = {"mean": np.zeros(features, np.float32), "var": np.ones(features, np.float32)}
        variables["batch_stats"] = {k: dict(ones) for k in params if "norm" in k}
        got, _ = block.apply(variables, x, train=True, mutable=["batch_stats"])
    else:
        got = block.apply(variables, x, train=False)

    def n(y, name):
        p = params[name]
        if norm == "group":
            return _np_group_norm(y, groups, p["scale"], p["bias"])
        return _np_batch_norm(y, p["scale"], p["bias"])

    x64 = x.astype(np.float64)
    y = np.maximum(n(_np_conv(x64, params["conv1"]["kernel"], strides, 1), "norm1"), 0)
    y = n(_np_conv(y, params["conv2"]["kernel"], 1, 1), "norm2")
    shortcut = x64
    if projects:
        shortcut = n(_np_conv(x64, params["shortcut_conv"]["kernel"], strides, 0), "shortcut_norm")
    want = np.maximum(shortcut + y, 0)
    assert got.shape == (2, 6 // strides, 6 // strides, features)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_parameter_counts_match_a_hand_count():
    images = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)

    def params(**kw):
        init = functools.partial(ResNet(**kw).init, train=False)
        shapes = jax.eval_shape(init, jax.random.key(0), images)
        return shapes["params"]

    tiny = params(stage_sizes=(1, 1), width=4, num_groups=2)
    norm = {4: 2 * 4, 8: 2 * 8}  # a scale and a bias per channel
    want = {
        "stem_conv": 7 * 7 * 3 * 4,  # no conv has a bias: the norm after it has one
        "stem_norm": norm[4],
        # 4 -> 4 at stride 1: two 3x3 convs, identity shortcut
        "stage0_block0": 3 * 3 * 4 * 4 + norm[4] + 3 * 3 * 4 * 4 + norm[4],
        # 4 -> 8 at stride 2: two 3x3 convs and a 1x1 projection shortcut
        "stage1_block0": 3 * 3 * 4 * 8 + norm[8] + 3 * 3 * 8 * 8 + norm[8] + 4 * 8 + norm[8],
    }
    assert {k: _count(v) for k, v in tiny.items()} == want
    # torchvision's resnet18 has 11,689,512 parameters, 513,000 of them in its 512 -> 1000 fc.
    for norm_kind in ("group", "batch"):
        resnet18 = params(stage_sizes=(2, 2, 2, 2), width=64, norm=norm_kind)
        assert _count(resnet18) == 11_689_512 - 513_000


def test_build_model_output_shapes():
    model, variables, forward = _group_model()
    assert isinstance(model, PIXEL_MODELS["cnn_lstm"])
    logits = forward(variables, {"pixels": _pixels(), "mask": MASK})
    assert logits.shape == (B, NUM_CLASSES) and logits.dtype == jnp.float32
    assert np.isfinite(logits).all()
    assert set(variables) == {"params"}  # GroupNorm keeps no batch statistics
    assert set(variables["params"]) == {"cnn", "lstm", "head"}


def test_masked_frames_change_nothing():
    _, variables, forward = _group_model()
    pixels = _pixels()
    noise = _pixels(seed=1)
    base = forward(variables, {"pixels": pixels, "mask": MASK})
    garbage = np.where(MASK[..., None, None, None], pixels, noise)
    np.testing.assert_array_equal(base, forward(variables, {"pixels": garbage, "mask": MASK}))
    # Float pixels in [0, 1] are the same video; NaN padding must not leak in either.
    floats = pixels.astype(np.float32) / 255
    floats_nan = np.where(MASK[..., None, None, None], floats, np.nan).astype(np.float32)
    np.testing.assert_allclose(
        base, forward(variables, {"pixels": floats_nan, "mask": MASK}), rtol=1e-5, atol=1e-5
    )


def test_time_order_matters():
    _, variables, forward = _group_model()
    pixels = _pixels()
    full = np.ones((B, T), bool)
    forward_order = forward(variables, {"pixels": pixels, "mask": full})
    reversed_order = forward(variables, {"pixels": pixels[:, ::-1], "mask": full})
    assert np.abs(forward_order - reversed_order).max() > 1e-4


def test_pixels_normalise_to_imagenet_statistics():
    mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
    uint8 = np.asarray([[0, 128, 255], [255, 0, 7]], np.uint8)
    got = normalize_pixels(jnp.asarray(uint8), IMAGENET_MEAN, IMAGENET_STD)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, (uint8 / 255 - mean) / std, rtol=1e-6, atol=1e-6)
    # Float pixels are taken as already in [0, 1] and keep their dtype.
    floats = jnp.asarray(uint8 / 255, jnp.bfloat16)
    assert normalize_pixels(floats, IMAGENET_MEAN, IMAGENET_STD).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="channels"):
        normalize_pixels(jnp.zeros((2, 4), jnp.uint8), IMAGENET_MEAN, IMAGENET_STD)


def test_batch_norm_statistics_skip_padding():
    """Train-mode BatchNorm: more padded frames change neither the logits nor batch_stats."""
    model = _model(norm="batch")
    pixels, mask = _pixels(batch=2), MASK[1:3]
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(0), {"pixels": pixels, "mask": mask}
    )
    train = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    logits, state = train(variables, {"pixels": pixels, "mask": mask})
    extra = 2
    padded = {
        "pixels": np.concatenate([pixels, _pixels(seed=2, batch=2)[:, :extra]], axis=1),
        "mask": np.concatenate([mask, np.zeros((2, extra), bool)], axis=1),
    }
    padded_logits, padded_state = train(variables, padded)
    np.testing.assert_allclose(logits, padded_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(padded_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    moved = jax.tree.map(
        lambda a, b: bool(np.any(a != b)), variables["batch_stats"], state["batch_stats"]
    )
    assert all(jax.tree.leaves(moved))


def test_pixels_are_required():
    model, variables, _ = _group_model()
    with pytest.raises(ValueError, match="pixels"):
        model.apply(variables, {"rgb": np.zeros((B, T, 16), np.float32)}, train=False)


# --- Training on a toy problem only time order can solve: growing vs shrinking squares. ---


def _toy_batch(pairs: int = 4) -> dict[str, np.ndarray]:
    """A bright square growing over T frames (label 0) and the same frames reversed (label 1)."""
    rng = np.random.default_rng(0)
    sides = np.linspace(6, 24, T).astype(int)
    videos, labels = [], []
    for _ in range(pairs):
        top, left = rng.integers(0, SIZE - sides[-1], 2)
        frames = np.full((T, SIZE, SIZE, 3), 20, np.uint8)
        for t, s in enumerate(sides):
            frames[t, top : top + s, left : left + s] = 230
        videos += [frames, frames[::-1]]
        labels += [[1, 0], [0, 1]]
    return {
        "pixels": np.stack(videos),
        "mask": np.ones((2 * pairs, T), bool),
        "labels": np.asarray(labels, np.float32),
    }


@functools.cache
def _toy_setup():
    """Initial params (the shared model's) and a jitted loss-and-gradients on the toy batch."""
    model, variables, _ = _group_model()
    params = variables["params"]
    batch = _toy_batch()
    inputs = {"pixels": batch["pixels"], "mask": batch["mask"]}

    @jax.jit
    def loss_and_grads(params):
        def loss(params):
            logits = model.apply({"params": params}, inputs, train=True)
            return optax.sigmoid_binary_cross_entropy(logits, batch["labels"]).mean()

        return jax.value_and_grad(loss)(params)

    return params, loss_and_grads


def test_gradients_reach_every_parameter():
    params, loss_and_grads = _toy_setup()
    _, grads = loss_and_grads(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    # Every conv kernel and norm of the CNN, through the LSTM, as well as the LSTM and head.
    nonzero = jax.tree.map(lambda g: bool(np.any(g != 0)), grads)
    assert all(jax.tree.leaves(nonzero)), nonzero
    assert len(jax.tree.leaves(grads["cnn"])) == 3 + 6 + 9  # stem, stage0, stage1 leaves


def test_sgd_learns_growing_vs_shrinking():
    params, loss_and_grads = _toy_setup()
    tx = optax.sgd(0.3, momentum=0.9)
    opt_state = tx.init(params)
    losses = []
    for _ in range(30):
        loss, grads = loss_and_grads(params)
        losses.append(float(loss))
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    # Each growing video has a shrinking twin made of the same frames, so a model blind to
    # order can do no better than predicting 1/2: a mean loss of log 2 = 0.69.
    assert losses[-1] < 0.2, losses
