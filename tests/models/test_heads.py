"""Heads and pooling against the starter equations written out in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmjax.models.heads import ContextGating, LogisticHead, MoEHead
from vmjax.models.pooling import masked_max, masked_mean

C, M, D, B = 7, 3, 11, 5


def _init_moe(x: np.ndarray) -> tuple[MoEHead, dict]:
    head = MoEHead(num_classes=C, num_mixtures=M)
    params = head.init(jax.random.key(0), jnp.asarray(x))["params"]
    # Non-zero expert bias so the test sees whether it is used.
    bias = jax.random.normal(jax.random.key(1), params["experts"]["bias"].shape)
    params["experts"]["bias"] = bias
    return head, params


def _numpy_moe_p(x: np.ndarray, params: dict) -> np.ndarray:
    """The starter's MoeModel in float64: softmax gates with a dummy expert, sigmoid experts."""
    x = np.asarray(x, np.float64)
    gates = x @ np.asarray(params["gates"]["kernel"], np.float64)
    experts = x @ np.asarray(params["experts"]["kernel"], np.float64)
    experts += np.asarray(params["experts"]["bias"], np.float64)
    gates = gates.reshape(-1, M + 1)  # The starter reshapes to [batch * classes, M + 1].
    experts = experts.reshape(-1, M)
    gates = np.exp(gates - gates.max(axis=1, keepdims=True))
    gates /= gates.sum(axis=1, keepdims=True)
    p = np.sum(gates[:, :M] / (1 + np.exp(-experts)), axis=1)
    return p.reshape(-1, C)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


def test_moe_matches_starter_equations():
    x = np.random.default_rng(0).normal(size=(B, D)).astype(np.float32)
    head, params = _init_moe(x)
    logits = np.asarray(head.apply({"params": params}, x))
    p = _numpy_moe_p(x, params)
    assert logits.shape == (B, C) and logits.dtype == np.float32
    np.testing.assert_allclose(_sigmoid(logits), p, atol=1e-5)
    np.testing.assert_allclose(logits, np.log(p / (1 - p)), rtol=1e-4, atol=1e-4)


def test_moe_is_stable_for_huge_activations():
    x = np.random.default_rng(1).normal(size=(B, D)).astype(np.float32)
    head, params = _init_moe(x)
    params = jax.tree.map(lambda w: w * 100, params)
    logits = np.asarray(head.apply({"params": params}, x))
    p = _numpy_moe_p(x, params)
    assert np.all(np.isfinite(logits))
    # Make sure the scaling really pushed some p to where float32 rounds it to 0 or 1.
    assert np.any((p < 1e-8) | (p > 1 - 1e-8))
    np.testing.assert_allclose(_sigmoid(logits), p, atol=1e-5)
    moderate = (p > 1e-6) & (p < 1 - 1e-6)
    want = np.log(p[moderate] / (1 - p[moderate]))
    np.testing.assert_allclose(logits[moderate], want, rtol=1e-3, atol=1e-3)


def test_moe_dummy_expert_caps_probability():
    x = np.random.default_rng(2).normal(size=(B, D)).astype(np.float32)
    head, params = _init_moe(x)
    params["experts"]["bias"] = jnp.full_like(params["experts"]["bias"], 1e4)
    logits = np.asarray(head.apply({"params": params}, x))
    gates = (x.astype(np.float64) @ np.asarray(params["gates"]["kernel"])).reshape(B, C, M + 1)
    gates = np.exp(gates) / np.exp(gates).sum(axis=-1, keepdims=True)
    # Every real expert says 1, so p is the mass not given to the dummy.
    np.testing.assert_allclose(_sigmoid(logits), 1 - gates[..., M], atol=1e-5)
    np.testing.assert_allclose(logits, np.log((1 - gates[..., M]) / gates[..., M]), atol=1e-4)


def test_moe_all_experts_off_gives_finite_very_negative_logits():
    x = np.random.default_rng(3).normal(size=(B, D)).astype(np.float32)
    head, params = _init_moe(x)
    params["experts"]["bias"] = jnp.full_like(params["experts"]["bias"], -1e4)
    logits = np.asarray(head.apply({"params": params}, x))
    assert np.all(np.isfinite(logits)) and np.all(logits < -1e3)


def test_logistic_is_affine():
    x = np.random.default_rng(4).normal(size=(B, D)).astype(np.float32)
    head = LogisticHead(num_classes=C)
    params = head.init(jax.random.key(0), x)["params"]
    params["logits"]["bias"] = jax.random.normal(jax.random.key(1), (C,))
    logits = np.asarray(head.apply({"params": params}, x))
    w, b = np.asarray(params["logits"]["kernel"]), np.asarray(params["logits"]["bias"])
    np.testing.assert_allclose(logits, x @ w + b, rtol=1e-5, atol=1e-5)


def _mask_and_frames(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 6, 3)).astype(np.float32)
    mask = rng.random((4, 6)) < 0.5
    mask[0] = True
    mask[1] = False  # A 0-frame video.
    x[~mask] = np.inf  # Padded frames must never leak in, however large.
    return x, mask


def test_masked_mean_matches_numpy():
    x, mask = _mask_and_frames(5)
    want = np.stack([x[i][mask[i]].mean(0) if mask[i].any() else np.zeros(3) for i in range(4)])
    np.testing.assert_allclose(np.asarray(masked_mean(jnp.asarray(x), mask)), want, rtol=1e-6)


def test_masked_max_matches_numpy():
    x, mask = _mask_and_frames(6)
    x[~mask] = 1e9  # Would win the max if the mask were ignored.
    want = np.stack([x[i][mask[i]].max(0) if mask[i].any() else np.zeros(3) for i in range(4)])
    np.testing.assert_array_equal(np.asarray(masked_max(jnp.asarray(x), mask)), want)


def _init_gating(use_bn: bool, x: np.ndarray) -> tuple[ContextGating, dict]:
    gating = ContextGating(use_bn=use_bn)
    variables = gating.init(jax.random.key(0), jnp.asarray(x), train=False)
    rng = np.random.default_rng(9)
    variables = jax.tree.map(lambda v: v + 0.3 * rng.normal(size=v.shape), variables)
    if use_bn:  # Running variances must stay positive.
        variables["batch_stats"]["gates_bn"]["var"] = rng.uniform(0.5, 2.0, size=D)
    return gating, jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), variables)


def test_context_gating_matches_numpy():
    x = np.random.default_rng(7).normal(size=(B, D)).astype(np.float32)
    gating, variables = _init_gating(False, x)
    y = np.asarray(gating.apply(variables, x, train=True))
    w, b = (np.asarray(variables["params"]["gates"][k], np.float64) for k in ("kernel", "bias"))
    assert y.shape == x.shape
    np.testing.assert_allclose(y, _sigmoid(x @ w + b) * x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_context_gating_with_batch_norm_matches_numpy(train: bool):
    x = np.random.default_rng(8).normal(size=(B, D)).astype(np.float32)
    gating, variables = _init_gating(True, x)
    if train:
        y, _ = gating.apply(variables, x, train=True, mutable=["batch_stats"])
    else:
        y = gating.apply(variables, x, train=False)
    params = jax.tree.map(lambda v: np.asarray(v, np.float64), variables["params"])
    stats = jax.tree.map(lambda v: np.asarray(v, np.float64), variables["batch_stats"])
    assert "bias" not in params["gates"]  # The BN offset replaces it, as in the starter.
    z = x.astype(np.float64) @ params["gates"]["kernel"]
    mean, var = (
        (z.mean(0), z.var(0)) if train else (stats["gates_bn"]["mean"], stats["gates_bn"]["var"])
    )
    z = (z - mean) / np.sqrt(var + 1e-5) * params["gates_bn"]["scale"] + params["gates_bn"]["bias"]
    np.testing.assert_allclose(np.asarray(y), _sigmoid(z) * x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_bn", [False, True])
def test_context_gating_jitted_grad_is_finite(use_bn: bool):
    x = np.random.default_rng(9).normal(size=(B, D)).astype(np.float32)
    gating, variables = _init_gating(use_bn, x)

    def loss(params):
        y, _ = gating.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y))

    grads = jax.tree.leaves(jax.jit(jax.grad(loss))(variables["params"]))
    assert all(np.all(np.isfinite(g)) for g in grads) and any(np.any(g != 0) for g in grads)
