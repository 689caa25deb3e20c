"""The model zoo: every model builds from its config preset, trains, and ignores padding."""

import functools

import jax
import numpy as np
import pytest

from tests.train.test_loop import get_config
from vmjax.data.device import model_inputs
from vmjax.models import LEVEL, MODELS, build_model
from vmjax.train import state as state_lib
from vmjax.train.step import train_step

C, B, T = 12, 3, 6


def small(name: str, **overrides):
    """The model's preset, shrunk so a CPU test runs in seconds."""
    c = get_config(name)
    m = c.model
    m.hidden_size, m.cluster_size, m.num_clusters, m.audio_clusters, m.groups = 16, 16, 4, 2, 2
    m.vivit.update(hidden_size=16, num_heads=2, mlp_dim=16, num_layers=1, num_temporal_layers=1)
    m.text_embed_dim, m.fusion_layers, m.fusion_layer = 8, 2, 0
    m.update(overrides)
    c.optimizer.warmup_steps = 0
    return c


def batch(level: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lengths = np.array([T, 2, 0])
    mask = np.arange(T)[None] < lengths[:, None]
    labels = (rng.random((B, C)) < 0.3).astype(np.uint8)
    out = {
        "labels": labels,
        "weights": np.ones(B, np.float32),
        "text_tokens": rng.integers(1, 50, (B, 4)).astype(np.int32),
        "text_mask": np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool),
    }
    if level == "video":
        out["rgb"] = rng.normal(size=(B, 1024)).astype(np.float32)
        out["audio"] = rng.normal(size=(B, 128)).astype(np.float32)
        return out
    out["rgb"] = (rng.integers(0, 256, (B, T, 1024)) * mask[..., None]).astype(np.uint8)
    out["audio"] = (rng.integers(0, 256, (B, T, 128)) * mask[..., None]).astype(np.uint8)
    out["mask"] = mask
    out["num_frames"] = lengths.astype(np.int32)
    return out


def _init(c):
    model = build_model(c.model, C)
    tx = state_lib.make_optimizer(c.optimizer, 100)
    inputs = model_inputs(batch(c.data.level))
    return model, tx, state_lib.create_train_state(model, tx, inputs, jax.random.PRNGKey(0))


def test_every_model_has_a_preset_at_its_level():
    for name in MODELS:
        assert get_config(name).model.name == name
        assert get_config(name).data.level == LEVEL[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_trains(name):
    c = small(name)
    model, tx, state = _init(c)
    step = jax.jit(functools.partial(train_step, model=model, tx=tx))
    data = batch(c.data.level)
    first = state
    losses = []
    for _ in range(4):
        state, metrics = step(state, data)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), first.params, state.params)
    assert any(jax.tree.leaves(changed))
    if first.model_state:  # batch norm statistics move in training
        moved = jax.tree.map(
            lambda a, b: bool(np.any(a != b)), first.model_state, state.model_state
        )
        assert any(jax.tree.leaves(moved))


@pytest.mark.parametrize("name", sorted(n for n in MODELS if LEVEL[n] == "frame"))
def test_padded_frames_change_nothing(name):
    c = small(name)
    model, _, state = _init(c)
    variables = {"params": state.params, **state.model_state}
    data = batch("frame")
    garbage = dict(data)
    noise = np.random.default_rng(1).integers(0, 256, data["rgb"].shape).astype(np.uint8)
    garbage["rgb"] = np.where(data["mask"][..., None], data["rgb"], noise)
    garbage["audio"] = np.where(data["mask"][..., None], data["audio"], 255)
    a = model.apply(variables, model_inputs(data), train=False)
    b = model.apply(variables, model_inputs(garbage), train=False)
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fusion", ["concat", "gated", "bottleneck", "late"])
def test_multimodal_fusions_and_ablations(fusion):
    c = small("multimodal", fusion=fusion, modalities="rgb,audio")
    model, _, state = _init(c)
    assert "text" not in state.params
    data = batch("frame")
    other_text = dict(data, text_tokens=data["text_tokens"] + 3)
    louder = dict(data, audio=np.where(data["mask"][..., None], 255 - data["audio"], 0))
    run = functools.partial(model.apply, {"params": state.params}, train=False)
    base = run(model_inputs(data))
    np.testing.assert_array_equal(base, run(model_inputs(other_text)))  # text is not an input
    assert not np.allclose(base, run(model_inputs(louder)))  # audio is


def test_late_fusion_weights_come_from_the_config():
    """model.late_weights reaches LateFusion: one learned weight per modality and class."""
    c = small("multimodal", fusion="late", modalities="rgb,audio", late_weights="class")
    model, _, state = _init(c)
    weights = np.asarray(state.params["late"]["class_weights"])
    np.testing.assert_array_equal(weights, np.zeros((2, C)))  # starts as the plain mean
    _, _, mean = _init(small("multimodal", fusion="late", modalities="rgb,audio"))
    assert "late" not in mean.params


def _bce(logits, labels):
    """Sigmoid cross-entropy summed over classes and videos, from its formula."""
    x, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    return float((np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))).sum())


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_modality_loss_adds_each_late_head_loss_in_training_only(weight):
    """model.modality_loss=w: the step's loss is the fused logits' BCE + w x each head's own BCE."""
    c = small("multimodal", fusion="late", modalities="rgb,audio", modality_loss=weight)
    model, tx, state = _init(c)
    assert "aux_logits" not in state.model_state  # init sows nothing
    data = batch("frame")
    # The heads' logits, read by flax's capture of each submodule's output (not the sown ones).
    fused, captured = model.apply(
        {"params": state.params},
        model_inputs(data),
        train=True,
        rngs={"dropout": jax.random.fold_in(state.rng, state.step)},
        capture_intermediates=lambda module, _: module.name in ("rgb_head", "audio_head"),
        mutable=["intermediates"],
    )
    heads = [captured["intermediates"][f"{m}_head"]["__call__"][0] for m in ("rgb", "audio")]
    expected = _bce(fused, data["labels"]) + weight * sum(_bce(h, data["labels"]) for h in heads)
    new_state, metrics = jax.jit(functools.partial(train_step, model=model, tx=tx))(state, data)
    np.testing.assert_allclose(float(metrics["loss"]), expected / B, rtol=1e-5)
    assert "aux_logits" not in new_state.model_state  # nothing sown is kept
    # Evaluation and inference see the fused logits only, with or without the weight.
    plain = model.apply({"params": state.params}, model_inputs(data), train=False)
    np.testing.assert_allclose(plain, fused, rtol=1e-5, atol=1e-6)


def test_multimodal_rejects_unknown_choices():
    for overrides in ({"fusion": "sum"}, {"modalities": "rgb,video"}):
        with pytest.raises(ValueError, match="model."):
            _init(small("multimodal", **overrides))
