"""Learned pooling over frames against the papers' equations written out in numpy float64."""

from collections.abc import Callable
from functools import cache, partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models.numpy_reference import l2n as _l2n
from tests.models.numpy_reference import sigmoid as _sigmoid
from tests.models.numpy_reference import softmax as _softmax
from tests.models.numpy_reference import to_numpy as _np
from vmjax.models.pooling import AttentionPooling, DBoF, NetVLAD, NeXtVLAD

B, T, D = 4, 6, 8
LENGTHS = (6, 3, 0, 1)  # Row 2 is a 0-frame video.
EPS_BN = 1e-5  # flax BatchNorm's default epsilon.
MOMENTUM = 0.99  # flax BatchNorm's default momentum.

# name -> (module, output dim); modules are frozen dataclasses, safe to share between tests.
MODULES: dict[str, tuple[nn.Module, int]] = {
    "attention_2heads": (AttentionPooling(hidden=5, num_heads=2), 2 * D),
    "dbof_max": (DBoF(cluster_size=10, hidden_size=6), 6),
    "dbof_mean_no_bn": (
        DBoF(cluster_size=10, hidden_size=6, pooling="mean", add_batch_norm=False),
        6,
    ),
    "netvlad": (NetVLAD(num_clusters=3), 3 * D),
    "nextvlad": (NeXtVLAD(num_clusters=3, expansion=2, groups=4), 3 * 2 * D // 4),
    "nextvlad_output": (
        NeXtVLAD(num_clusters=3, expansion=2, groups=4, output_size=5, dropout_rate=0.5),
        5,
    ),
}
# Train mode only differs where there is batch norm or dropout.
CASES = [(name, False) for name in MODULES] + [
    (name, True) for name in ("dbof_max", "nextvlad_output")
]


def _frames(seed: int, lengths: tuple[int, ...] = LENGTHS) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(lengths), T, D)).astype(np.float32)
    mask = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    x[~mask] = 1e6  # Padded frames hold garbage the modules must never read.
    return x, mask


def _pad(x: np.ndarray, mask: np.ndarray, extra: int, value: float) -> tuple[np.ndarray, ...]:
    """Appends `extra` padded frames full of `value`, and also scribbles `value` on old padding."""
    garbage = np.full((x.shape[0], extra, x.shape[2]), value, np.float32)
    x = np.where(mask[..., None], x, value).astype(np.float32)
    return np.concatenate([x, garbage], 1), np.concatenate(
        [mask, np.zeros_like(mask[:, :extra])], 1
    )


def _init(module: nn.Module, x: np.ndarray, mask: np.ndarray, seed: int = 0) -> dict:
    """Random variables in the module's shapes; biases, BN offsets and statistics non-trivial."""
    # Shapes only: running the real initialisers would compile a random-number graph per test.
    init = partial(module.init, train=False)
    shapes = jax.eval_shape(init, jax.random.key(0), jnp.asarray(x), jnp.asarray(mask))
    rng = np.random.default_rng(seed)

    def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        name = path[-1].key
        if name == "kernel":
            return rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0])
        if name in ("scale", "var"):
            return rng.uniform(0.5, 2.0, size=leaf.shape)
        return 0.3 * rng.normal(size=leaf.shape)  # Biases, BN offsets and means, centers.

    draws = jax.tree_util.tree_map_with_path(draw, shapes)
    return jax.tree.map(lambda a: np.asarray(a, np.float32), draws)


@cache
def _jitted_apply(module: nn.Module, train: bool) -> Callable:
    """One jitted apply per (module, mode), so tests that share shapes share the compilation."""
    if not train:
        return jax.jit(partial(module.apply, train=False))
    # A fixed dropout key: the dropout mask's shape does not depend on the number of frames.
    rngs = {"dropout": jax.random.key(7)}
    return jax.jit(partial(module.apply, train=True, rngs=rngs, mutable=["batch_stats"]))


def _apply(module, variables, x, mask, *, train: bool) -> tuple[np.ndarray, dict]:
    """Output and the updated batch statistics ({} in eval mode), jitted as a trainer would."""
    out = _jitted_apply(module, train)(variables, jnp.asarray(x), jnp.asarray(mask))
    y, updates = out if train else (out, {})
    return np.asarray(y), updates


def _bn(z: np.ndarray, p: dict, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return (z - mean) / np.sqrt(var + EPS_BN) * p["scale"] + p["bias"]


# ---------------------------------------------------------------- contract for every module


@pytest.mark.parametrize("name,train", CASES)
def test_padded_frames_change_nothing(name: str, train: bool):
    module, out_dim = MODULES[name]
    x, mask = _frames(0)
    variables = _init(module, x, mask)
    y, stats = _apply(module, variables, x, mask, train=train)
    x_pad, mask_pad = _pad(x, mask, extra=3, value=1e6)
    y_pad, stats_pad = _apply(module, variables, x_pad, mask_pad, train=train)
    assert y.shape == (B, out_dim) and y.dtype == np.float32
    np.testing.assert_allclose(y_pad, y, rtol=1e-5, atol=1e-6)
    # Padded frames must not move the batch norm statistics either.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), stats_pad, stats
    )


@pytest.mark.parametrize("name,train", CASES)
def test_zero_frame_videos_give_finite_output(name: str, train: bool):
    module, _ = MODULES[name]
    x, mask = _frames(1)
    variables = _init(module, x, mask)
    for lengths in (LENGTHS, (0, 0, 0, 0)):  # One empty row; then a batch of only empty rows.
        x, mask = _frames(1, lengths)
        x_inf, _ = _pad(x, mask, extra=1, value=np.inf)
        y, stats = _apply(module, variables, x_inf[:, :T], mask, train=train)
        assert np.all(np.isfinite(y)), lengths
        assert all(np.all(np.isfinite(s)) for s in jax.tree.leaves(stats)), lengths


@pytest.mark.parametrize("name", sorted(MODULES))
def test_jitted_grad_is_finite(name: str):
    module, _ = MODULES[name]
    x, mask = _frames(2)
    variables = _init(module, x, mask)

    def grad(params):
        def loss(p):
            y, _ = module.apply(
                {**variables, "params": p},
                jnp.asarray(x),
                jnp.asarray(mask),
                train=True,
                rngs={"dropout": jax.random.key(0)},
                mutable=["batch_stats"],
            )
            return jnp.sum(jnp.sin(3 * y))

        return jax.grad(loss)(params)

    # Compiled at XLA:CPU's backend level 2, not the suite's level 0 (tests/conftest.py): at
    # level 0 YNNPACK's fused dots gave NaN in dbof_max's input BN gradients on an AVX-512 AMD
    # EPYC (family 25, model 17); levels 1 to 3 and the default give finite ones.
    options = {"xla_backend_optimization_level": 2}
    compiled = jax.jit(grad).lower(variables["params"]).compile(compiler_options=options)
    grads = jax.tree.leaves(compiled(variables["params"]))
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert any(np.any(g != 0) for g in grads)


# ---------------------------------------------------------------- attention pooling


def _numpy_attention(x: np.ndarray, mask: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray]:
    """a_t = softmax_t(w^T tanh(W x_t + b)) over valid frames; y = sum_t a_t x_t per head."""
    heads = p["score"]["kernel"].shape[1]
    ys, weights = [], np.zeros((x.shape[0], x.shape[1], heads))
    for b in range(x.shape[0]):
        frames = x[b][mask[b]].astype(np.float64)
        if len(frames) == 0:
            ys.append(np.zeros(heads * x.shape[2]))
            continue
        scores = np.tanh(frames @ p["proj"]["kernel"] + p["proj"]["bias"]) @ p["score"]["kernel"]
        a = _softmax(scores, axis=0)  # [frames, heads]
        weights[b, mask[b]] = a
        ys.append((a.T @ frames).reshape(-1))
    return np.stack(ys), weights


@pytest.mark.parametrize("heads", [1, 3])
def test_attention_matches_numpy(heads: int):
    module = AttentionPooling(hidden=5, num_heads=heads)
    x, mask = _frames(3)
    variables = _init(module, x, mask)
    y, state = module.apply(variables, x, mask, train=False, mutable=["intermediates"])
    (a,) = state["intermediates"]["weights"]
    want_y, want_a = _numpy_attention(x, mask, _np(variables["params"]))
    np.testing.assert_allclose(np.asarray(y), want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(a), want_a, atol=1e-6)
    sums = np.asarray(a).sum(axis=1)  # [batch, heads]
    np.testing.assert_allclose(
        sums, np.where(mask.any(1), 1.0, 0.0)[:, None] * np.ones(heads), atol=1e-6
    )
    assert np.all(np.asarray(a)[~mask] == 0)
    np.testing.assert_array_equal(np.asarray(y)[~mask.any(1)], 0)


# ---------------------------------------------------------------- DBoF


def _numpy_dbof(x, mask, variables, *, train: bool, pooling: str) -> tuple[np.ndarray, dict]:
    """The starter's DbofModel with BN; output and the running statistics it leaves behind."""
    p, s = _np(variables["params"]), _np(variables["batch_stats"])
    stats = {}

    def bn(z: np.ndarray, name: str, counted: np.ndarray) -> np.ndarray:
        """In training the batch statistics come from z[counted] only: valid frames or rows."""
        mean, var = (
            (z[counted].mean(0), z[counted].var(0)) if train else (s[name]["mean"], s[name]["var"])
        )
        stats[name] = {
            "mean": MOMENTUM * s[name]["mean"] + (1 - MOMENTUM) * mean,
            "var": MOMENTUM * s[name]["var"] + (1 - MOMENTUM) * var,
        }
        return _bn(z, p[name], mean, var)

    z = bn(x.astype(np.float64), "input_bn", mask) @ p["cluster"]["kernel"]
    z = np.clip(bn(z, "cluster_bn", mask), 0, 6)
    pool = np.max if pooling == "max" else np.mean
    pooled = np.stack(
        [
            pool(z[b][mask[b]], 0) if mask[b].any() else np.zeros(z.shape[-1])
            for b in range(x.shape[0])
        ]
    )
    h = bn(pooled @ p["hidden"]["kernel"], "hidden_bn", mask.any(1))
    return np.clip(h, 0, 6), stats


@pytest.mark.parametrize("pooling", ["max", "mean"])
@pytest.mark.parametrize("train", [False, True])
def test_dbof_matches_starter_equations(pooling: str, train: bool):
    module = DBoF(cluster_size=10, hidden_size=6, pooling=pooling)
    x, mask = _frames(4, (6, 3, 0, 2))
    variables = _init(module, x, mask)
    y, updates = _apply(module, variables, x, mask, train=train)
    want, want_stats = _numpy_dbof(x, mask, variables, train=train, pooling=pooling)
    # Some hidden units must be strictly inside (0, 6) or relu6 would hide a wrong BN.
    assert np.any((want > 0.1) & (want < 5.9))
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    if train:
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
            _np(updates["batch_stats"]),
            want_stats,
        )


def test_dbof_without_batch_norm_matches_numpy():
    module = DBoF(cluster_size=10, hidden_size=6, pooling="mean", add_batch_norm=False)
    x, mask = _frames(5)
    variables = _init(module, x, mask)
    p = _np(variables["params"])
    y, _ = _apply(module, variables, x, mask, train=True)
    want = []
    for b in range(B):
        z = np.clip(x[b][mask[b]] @ p["cluster"]["kernel"] + p["cluster"]["bias"], 0, 6)
        pooled = z.mean(0) if len(z) else np.zeros(10)
        want.append(np.clip(pooled @ p["hidden"]["kernel"] + p["hidden"]["bias"], 0, 6))
    np.testing.assert_allclose(y, np.stack(want), rtol=1e-5, atol=1e-5)


def test_dbof_rejects_unknown_pooling():
    x, mask = _frames(6)
    with pytest.raises(ValueError, match="pooling"):
        DBoF(cluster_size=4, hidden_size=2, pooling="sum").init(
            jax.random.key(0), x, mask, train=False
        )


# ---------------------------------------------------------------- NetVLAD / NeXtVLAD


def _numpy_netvlad(x: np.ndarray, mask: np.ndarray, p: dict) -> np.ndarray:
    """V(j,k) = sum_t a_k(x_t)(x_t(j) - c_k(j)); intra L2 over j; flatten k-major; L2."""
    w, bias, c = p["assign"]["kernel"], p["assign"]["bias"], p["centers"]
    k_num, dim = c.shape
    out = []
    for b in range(x.shape[0]):
        v = np.zeros((k_num, dim))
        for t in range(x.shape[1]):
            if not mask[b, t]:
                continue
            xt = x[b, t].astype(np.float64)
            a = _softmax(xt @ w + bias)
            for k in range(k_num):
                v[k] += a[k] * (xt - c[k])
        out.append(_l2n(_l2n(v).reshape(-1)))
    return np.stack(out)


def _numpy_nextvlad(x: np.ndarray, mask: np.ndarray, p: dict, groups: int) -> np.ndarray:
    """V(j,k) = sum_t sum_g alpha_g alpha_gk (x~_gt(j) - c_k(j)), then normalised as NetVLAD."""
    c = p["centers"]
    k_num, n = c.shape
    out = []
    for b in range(x.shape[0]):
        v = np.zeros((k_num, n))
        for t in range(x.shape[1]):
            if not mask[b, t]:
                continue
            x_dot = x[b, t].astype(np.float64) @ p["expand"]["kernel"] + p["expand"]["bias"]
            alpha_g = _sigmoid(
                x_dot @ p["group_attention"]["kernel"] + p["group_attention"]["bias"]
            )
            logits = x_dot @ p["assign"]["kernel"] + p["assign"]["bias"]
            for g in range(groups):
                alpha_gk = _softmax(logits[g * k_num : (g + 1) * k_num])
                x_tilde = x_dot[g * n : (g + 1) * n]
                for k in range(k_num):
                    v[k] += alpha_g[g] * alpha_gk[k] * (x_tilde - c[k])
        out.append(_l2n(_l2n(v).reshape(-1)))
    return np.stack(out)


def test_netvlad_matches_paper_equations():
    module = NetVLAD(num_clusters=3)
    x, mask = _frames(7)
    variables = _init(module, x, mask)
    y, _ = _apply(module, variables, x, mask, train=False)
    want = _numpy_netvlad(x, mask, _np(variables["params"]))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    norms = np.linalg.norm(y, axis=1)
    np.testing.assert_allclose(norms, np.where(mask.any(1), 1.0, 0.0), atol=1e-5)


@pytest.mark.parametrize("expansion,groups", [(2, 4), (1, 2), (3, 8)])
def test_nextvlad_matches_paper_equations(expansion: int, groups: int):
    module = NeXtVLAD(num_clusters=3, expansion=expansion, groups=groups)
    x, mask = _frames(8)
    variables = _init(module, x, mask)
    y, _ = _apply(module, variables, x, mask, train=False)
    want = _numpy_nextvlad(x, mask, _np(variables["params"]), groups)
    assert y.shape == (B, 3 * expansion * D // groups)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_nextvlad_output_layer_matches_numpy():
    module = NeXtVLAD(num_clusters=3, expansion=2, groups=4, output_size=5, dropout_rate=0.5)
    x, mask = _frames(9)
    variables = _init(module, x, mask)
    p, s = _np(variables["params"]), _np(variables["batch_stats"])
    y, _ = _apply(module, variables, x, mask, train=False)  # Eval: no dropout, running stats.
    vlad = _numpy_nextvlad(x, mask, p, groups=4)
    want = _bn(vlad @ p["output"]["kernel"], p["output_bn"], **s["output_bn"])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_nextvlad_rejects_groups_not_dividing_expanded_dim():
    x, mask = _frames(10)
    with pytest.raises(ValueError, match="groups"):
        NeXtVLAD(num_clusters=2, expansion=1, groups=3).init(
            jax.random.key(0), x, mask, train=False
        )
