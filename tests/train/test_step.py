"""Pure steps against numpy references: loss, on-device dequantization, padding rows."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vmjax.data.device import model_inputs
from vmjax.models import build_model
from vmjax.train import state as state_lib
from vmjax.train.step import eval_step, train_step, weighted_loss


def _bce(logits, labels):
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def test_weighted_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7)).astype(np.float32)
    labels = (rng.random((4, 7)) < 0.3).astype(np.uint8)
    weights = np.array([1, 1, 0, 1], np.float32)
    total, count = weighted_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
    want = (_bce(logits, labels).sum(1) * weights).sum()
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    assert float(count) == 3


def test_model_inputs_dequantize_on_device_like_the_spec():
    q = np.arange(256, dtype=np.uint8).reshape(2, 128)
    batch = {"rgb": jnp.asarray(np.tile(q, (1, 8))), "audio": jnp.asarray(q), "mask": jnp.ones(2)}
    out = jax.jit(model_inputs)(batch)
    want = q.astype(np.float32) * np.float32(4 / 255) + np.float32(4 / 512 - 2)
    np.testing.assert_array_equal(np.asarray(out["audio"]), want)
    assert out["audio"][0, 0] == np.float32(-1.9921875)
    assert out["audio"][1, 127] == np.float32(2.0078125)
    assert "mask" in out
    floats = {"rgb": jnp.ones((2, 1024)), "audio": jnp.ones((2, 128))}
    np.testing.assert_array_equal(model_inputs(floats)["rgb"], 1.0)


def _setup(name="moe", num_classes=10, learning_rate=0.05):
    """A small model, constant-rate Adam (clipped at norm 1) and its state from seed 0."""
    cfg = ml_collections.ConfigDict({"name": name, "num_mixtures": 2})
    model = build_model(cfg, num_classes)
    opt = ml_collections.ConfigDict(
        {
            "learning_rate": learning_rate,
            "warmup_steps": 0,
            "end_learning_rate_factor": 1.0,
            "weight_decay": 0.0,
            "clip_norm": 1.0,
        }
    )
    tx = state_lib.make_optimizer(opt, 100)
    inputs = {"rgb": jnp.zeros((1, 1024)), "audio": jnp.zeros((1, 128))}
    state = state_lib.create_train_state(model, tx, inputs, jax.random.PRNGKey(0))
    return model, tx, state


def _jit_step(model, tx, **options):
    """train_step jitted as the trainers call it (eagerly, each op of the model compiles alone)."""
    return jax.jit(functools.partial(train_step, model=model, tx=tx, **options))


def _batch(rng, n, pad=0):
    labels = np.zeros((n + pad, 10), np.uint8)
    labels[np.arange(n), rng.integers(0, 10, n)] = 1
    rgb = rng.normal(size=(n + pad, 1024)).astype(np.float32)
    rgb[:n] += labels[:n].argmax(1)[:, None] * 0.1  # learnable signal
    return {
        "rgb": rgb,
        "audio": rng.normal(size=(n + pad, 128)).astype(np.float32),
        "labels": labels,
        "weights": np.array([1] * n + [0] * pad, np.float32),
    }


def test_train_step_lowers_the_loss_and_counts_steps():
    model, tx, state = _setup()
    step = _jit_step(model, tx)
    batch = _batch(np.random.default_rng(0), 16)
    losses = []
    for _ in range(30):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert int(state.step) == 30
    assert losses[-1] < 0.5 * losses[0]


def test_padding_rows_do_not_change_the_update():
    model, tx, state = _setup("logistic")
    rng = np.random.default_rng(1)
    batch = _batch(rng, 6)
    padded = {k: np.concatenate([v, 100 * np.ones_like(v[:3])]) for k, v in batch.items()}
    padded["weights"][6:] = 0
    step = _jit_step(model, tx)
    a, ma = step(state, batch)
    b, mb = step(state, padded)
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_eval_step_scores_are_probabilities():
    model, _, state = _setup()
    batch = _batch(np.random.default_rng(2), 5, pad=1)
    out = eval_step(state, batch, model=model)
    logits = model.apply({"params": state.params}, model_inputs(batch), train=False)
    np.testing.assert_allclose(out["scores"], jax.nn.sigmoid(logits), rtol=1e-6)
    want = (_bce(np.asarray(logits), batch["labels"]).sum(1) * batch["weights"]).sum()
    np.testing.assert_allclose(float(out["loss_sum"]), want, rtol=1e-4)
    assert float(out["count"]) == 5


def test_bfloat16_runs_the_model_in_bf16_and_keeps_float32_state():
    model, tx, state = _setup()
    batch = _batch(np.random.default_rng(3), 8)
    step = functools.partial(train_step, model=model, tx=tx, dtype="bfloat16")
    jaxpr = str(jax.make_jaxpr(step)(state, batch))
    dots = [line for line in jaxpr.splitlines() if "dot_general" in line]
    assert dots and all("bf16[" in line for line in dots)
    new, metrics = jax.jit(step)(state, batch)
    assert {x.dtype for x in jax.tree.leaves((new.params, new.opt_state))} <= {
        jnp.dtype("float32"),
        jnp.dtype("int32"),
    }
    assert metrics["loss"].dtype == jnp.float32


def test_grad_accumulation_equals_the_full_batch_gradient_step():
    model, tx, state = _setup()
    batch = _batch(np.random.default_rng(4), 12, pad=4)  # padding rows land in some micro-batches
    full, mf = _jit_step(model, tx)(state, batch)
    accum, ma = _jit_step(model, tx, grad_accum=4)(state, batch)
    np.testing.assert_allclose(float(ma["loss"]), float(mf["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(ma["grad_norm"]), float(mf["grad_norm"]), rtol=1e-5)
    with np.testing.assert_raises_regex(ValueError, "grad_accum=5"):
        _jit_step(model, tx, grad_accum=5)(state, batch)


def test_nonfinite_updates_are_flagged_and_skipped_on_request():
    model, tx, state = _setup()
    batch = _batch(np.random.default_rng(5), 8)
    batch["rgb"][3, 7] = np.nan
    step = _jit_step(model, tx)
    bad, m = step(state, batch)
    assert not bool(m["finite"])
    assert np.isnan(np.asarray(jax.tree.leaves(bad.params)[0])).any()
    kept, m = _jit_step(model, tx, skip_nonfinite=True)(state, batch)
    assert not bool(m["finite"]) and int(kept.step) == 1
    same = jax.tree.map(
        np.array_equal, (kept.params, kept.opt_state), (state.params, state.opt_state)
    )
    assert all(jax.tree.leaves(same))
    good, m = step(state, _batch(np.random.default_rng(5), 8))
    assert bool(m["finite"])


def test_a_step_whose_loss_is_above_max_loss_is_skipped_with_skip_diverged():
    model, tx, state = _setup()
    batch = _batch(np.random.default_rng(5), 8)
    plain, m = _jit_step(model, tx)(state, batch)
    loss = float(m["loss"])
    assert "diverged" not in m  # only with skip_diverged
    # A limit below this batch's loss: the old parameters and optimizer state are kept.
    skipping = _jit_step(model, tx, skip_diverged=True)  # the limit is traced: one compilation
    kept, m = skipping(state, batch, loss * 0.5)
    assert bool(m["diverged"]) and bool(m["finite"]) and int(kept.step) == 1
    assert float(m["loss"]) == pytest.approx(loss, rel=1e-6)
    same = jax.tree.map(
        np.array_equal, (kept.params, kept.opt_state), (state.params, state.opt_state)
    )
    assert all(jax.tree.leaves(same))
    # A limit above it: the ordinary update, bit for bit.
    moved, m = skipping(state, batch, loss * 2.0)
    assert not bool(m["diverged"])
    for x, y in zip(jax.tree.leaves(moved.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_array_equal(x, y)


def test_train_step_augments_the_batch_with_its_own_key_stream():
    """With augment on, the step equals a plain step on augment_batch(augment_key(...)) output."""
    from vmjax.data import augment
    from vmjax.train.step import augment_key

    cfg = augment.default_config()
    cfg.feature_noise = 0.5
    cfg.mixup_alpha = 0.4
    model, tx, state = _setup("logistic")
    batch = _batch(np.random.default_rng(2), 8)
    got, got_metrics = train_step(state, batch, model=model, tx=tx, augment=cfg)
    key = augment_key(jax.random.fold_in(state.rng, state.step))
    augmented = augment.augment_batch(key, {k: jnp.asarray(v) for k, v in batch.items()}, cfg)
    assert not np.allclose(augmented["rgb"], batch["rgb"])  # it really changed the inputs
    want, want_metrics = train_step(state, augmented, model=model, tx=tx)
    np.testing.assert_allclose(float(got_metrics["loss"]), float(want_metrics["loss"]), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    # All off: the same update as no augmentation at all.
    off, _ = train_step(state, batch, model=model, tx=tx, augment=augment.default_config())
    plain, _ = train_step(state, batch, model=model, tx=tx)
    for x, y in zip(jax.tree.leaves(off.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_array_equal(x, y)


def test_the_flagship_config_lists_every_augment_field_with_its_default():
    import importlib.util
    import pathlib

    from vmjax.data import augment

    path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "yt8m.py"
    spec = importlib.util.spec_from_file_location("yt8m_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config("").augment.to_dict() == augment.default_config().to_dict()
