"""Transformer pieces: masking, determinism, and attention against the equations in numpy."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.models.random_params import random_params
from vmjax.models.transformer import (
    Encoder,
    EncoderBlock,
    MultiHeadAttention,
    dot_product_attention,
)

# The shapes and sizes of test_fusion's MBT layers, so eager ops compile once for both.
B, N, D = 3, 7, 16


_params = random_params


def _tokens(seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, N, D)), jnp.float32)


def _mask() -> jax.Array:
    mask = np.ones((B, N), bool)
    mask[0, 4:] = False
    mask[1, 1:] = False
    mask[2, 5:] = False
    return jnp.asarray(mask)


def _encoder() -> Encoder:
    return Encoder(num_layers=2, num_heads=2, mlp_dim=32, dropout=0.1, attention_dropout=0.1)


def test_padded_tokens_never_change_valid_outputs():
    model, x, mask = _encoder(), _tokens(), _mask()
    variables = {"params": _params(model, x, mask, train=False)}
    # Different content only where the mask is False.
    x_other = jnp.where(mask[..., None], x, 100.0 * _tokens(seed=1))
    out = model.apply(variables, x, mask, train=False)
    out_other = model.apply(variables, x_other, mask, train=False)
    np.testing.assert_allclose(out[mask], out_other[mask], atol=1e-5)
    # Without the mask the padded tokens would matter: the test can fail.
    unmasked = model.apply(variables, x_other, train=False)
    assert not np.allclose(unmasked[mask], out[mask], atol=1e-3)


def test_all_keys_padded_is_finite():
    x = _tokens()
    y = dot_product_attention(
        x.reshape(B, N, 2, D // 2),
        x.reshape(B, N, 2, D // 2),
        x.reshape(B, N, 2, D // 2),
        jnp.zeros((B, N), bool),
    )
    assert bool(jnp.all(y == 0))


def test_eval_is_deterministic_and_train_uses_dropout():
    model, x, mask = _encoder(), _tokens(), _mask()
    variables = {"params": _params(model, x, mask, train=False)}
    # 'rbg' keys: one XLA op per draw, far cheaper to compile on CPU than threefry.
    key1, key2 = jax.random.key(1, impl="rbg"), jax.random.key(2, impl="rbg")
    a = model.apply(variables, x, mask, train=False, rngs={"dropout": key1})
    b = model.apply(variables, x, mask, train=False, rngs={"dropout": key2})
    np.testing.assert_array_equal(a, b)
    c = model.apply(variables, x, mask, train=True, rngs={"dropout": key1})
    d = model.apply(variables, x, mask, train=True, rngs={"dropout": key2})
    assert not np.allclose(c, d)


def test_single_head_attention_matches_numpy():
    model, x, mask = MultiHeadAttention(num_heads=1), _tokens(), _mask()
    params = _params(model, x, mask, train=False)
    out = np.asarray(model.apply({"params": params}, x, mask, train=False))

    def dense(name, v):
        p = jax.tree.map(np.asarray, params[name])
        return v @ p["kernel"].reshape(D, D) + p["bias"].reshape(D)

    xn, mn = np.asarray(x, np.float64), np.asarray(mask)
    q, k, v = dense("query", xn), dense("key", xn), dense("value", xn)
    expected = np.zeros_like(xn)
    for b in range(B):
        logits = q[b] @ k[b].T / np.sqrt(D)
        logits[:, ~mn[b]] = -np.inf
        w = np.exp(logits - logits.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        expected[b] = w @ v[b]
    expected = dense("out", expected)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_block_and_encoder_keep_shape_and_leading_axes():
    x = jnp.ones((2, 3, N, D))  # Extra leading axes: attention runs over the tokens axis only.
    block = EncoderBlock(num_heads=2, mlp_dim=32)
    params = _params(block, x, jnp.ones((2, 3, N), bool), train=False)
    assert block.apply({"params": params}, x, train=False).shape == x.shape
    encoder = _encoder()
    params = _params(encoder, _tokens(), train=False)
    assert set(params) == {"block_0", "block_1", "ln_final"}
