"""ViViT: embeddings against numpy, the four variants' shapes, masking and factorisation, and
the paper's parameter counts at its Kinetics-400 setup."""

import functools
import importlib.util
import pathlib
from collections.abc import Callable

import einops
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models.random_params import random_params
from vmjax.models import build_model
from vmjax.models.vivit import (
    VARIANTS,
    FactorisedDotProductBlock,
    FactorisedSelfAttentionBlock,
    FrameFeatureEmbedding,
    TubeletEmbedding,
    ViViT,
    ViViTEncoder,
    sincos_init,
)

HIDDEN = 32
# Models 3 and 4 have no CLS token. spatio_temporal's mean pooling is the masked token mean of
# Models 3 and 4, so only the factorised encoder's (frame means, then masked) is checked too.
VARIANT_POOLINGS = [
    ("spatio_temporal", "cls"),
    ("factorised_encoder", "cls"),
    ("factorised_encoder", "mean"),
    ("factorised_self_attention", "mean"),
    ("factorised_dot_product", "mean"),
]


_params = random_params


def _pooling(variant: str) -> str:
    return (
        "mean" if variant.startswith("factorised_") and variant != "factorised_encoder" else "cls"
    )


def _encoder(variant: str, pooling: str | None = None, **kwargs) -> ViViTEncoder:
    defaults = dict(
        variant=variant,
        num_layers=1,
        hidden_size=HIDDEN,
        num_heads=4,
        mlp_dim=64,
        num_temporal_layers=1,
        pooling=pooling or _pooling(variant),
        patch_size=(2, 16, 16),
    )
    return ViViTEncoder(**(defaults | kwargs))


def _frames(t: int = 4, f: int = 64) -> tuple[jax.Array, jax.Array]:
    """Frame features `[3, t, f]` with rows of t, 2 and 0 valid frames."""
    rng = np.random.default_rng(0)
    mask = np.zeros((3, t), bool)
    mask[0], mask[1, :2] = True, True
    return jnp.asarray(rng.normal(size=(3, t, f)), jnp.float32), jnp.asarray(mask)


def test_tubelet_embedding_is_a_patch_projection():
    b, t, h, w, c, (pt, ph, pw) = 2, 4, 8, 12, 3, (2, 4, 4)
    video = np.random.default_rng(0).normal(size=(b, t, h, w, c)).astype(np.float32)
    model = TubeletEmbedding(HIDDEN, (pt, ph, pw))
    params = _params(model, video)
    tokens = np.asarray(model.apply({"params": params}, video))

    nt, nh, nw = t // pt, h // ph, w // pw
    assert tokens.shape == (b, nt, nh * nw, HIDDEN)
    tubelets = video.reshape(b, nt, pt, nh, ph, nw, pw, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    tubelets = tubelets.reshape(b, nt, nh * nw, pt * ph * pw * c)
    kernel = np.asarray(params["conv"]["kernel"]).reshape(pt * ph * pw * c, HIDDEN)
    expected = tubelets @ kernel + np.asarray(params["conv"]["bias"])
    np.testing.assert_allclose(tokens, expected, rtol=1e-4, atol=1e-5)


def test_tubelet_embedding_rejects_indivisible_shapes():
    with pytest.raises(ValueError, match="not divisible"):
        _params(TubeletEmbedding(HIDDEN, (2, 16, 16)), jnp.ones((1, 3, 32, 32, 3)))


def test_frame_feature_embedding_splits_into_tokens():
    frames, mask = _frames(t=10)
    model = FrameFeatureEmbedding(HIDDEN, tokens_per_frame=3)
    params = _params(model, frames, mask)
    tokens = np.asarray(model.apply({"params": params}, frames, mask))
    assert tokens.shape == (3, 10, 3, HIDDEN)
    p = params["projection"]
    dense = np.asarray(frames) @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
    np.testing.assert_allclose(tokens[0, :, 1], dense[0, :, HIDDEN : 2 * HIDDEN], atol=1e-5)
    # Padded frames are zeroed before the projection: only the bias is left.
    bias = np.asarray(p["bias"]).reshape(3, HIDDEN)
    np.testing.assert_array_equal(tokens[2], np.broadcast_to(bias, (10, 3, HIDDEN)))

    # NaN padding reaches neither the tokens nor the kernel's gradient (x^T dy). ViViT's own
    # intermediates are then all finite, so its gradients are too.
    nan_frames = jnp.where(mask[..., None], frames, jnp.nan)
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, nan_frames, mask) ** 2))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("variant", VARIANTS)
def test_pixel_shapes(variant):
    # Batch 3 and 4 x 4 tokens like the frame tests below, so eager ops compile once for all.
    video = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 32, 32, 3)), jnp.float32)
    model = _encoder(variant)
    variables = {"params": _params(model, video, train=False)}
    out = model.apply(variables, video, train=True, rngs={"dropout": jax.random.key(1)})
    assert out.shape == (3, HIDDEN) and bool(jnp.all(jnp.isfinite(out)))
    # nt = T / pt = 4 time indices, ns = (H / ph) * (W / pw) = 4 spatial tokens.
    vivit = variables["params"]["vivit"]
    assert vivit["pos_embedding_time"].shape == (1, 4, 1, HIDDEN)
    assert vivit["pos_embedding_space"].shape == (1, 1, 4, HIDDEN)

    # A frame mask: row 1 keeps frames 0-3 (tubelets 0-1), row 2 frames 0-4 (tubelet 2 is
    # partly real, so kept). Padded frames' pixels then change nothing.
    mask = np.ones((3, 8), bool)
    mask[1, 4:], mask[2, 5:] = False, False
    mask = jnp.asarray(mask)
    masked = model.apply(variables, video, mask, train=False)
    np.testing.assert_allclose(masked[0], out[0], atol=1e-5)
    other = jnp.where(mask[:, :, None, None, None], video, jnp.nan)
    np.testing.assert_allclose(model.apply(variables, other, mask, train=False), masked, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_sequence_shapes_and_auto_pooling(variant):
    tokens = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 4, HIDDEN)), jnp.float32)
    model = ViViT(variant, 1, HIDDEN, 4, 64, num_temporal_layers=1)  # pooling='auto'
    variables = {"params": _params(model, tokens, train=False)}
    pooled, out = model.apply(variables, tokens, train=False, return_tokens=True)
    assert pooled.shape == (3, HIDDEN)
    assert out.shape == ((3, 4, 1, HIDDEN) if variant == "factorised_encoder" else tokens.shape)
    # 'auto' is the explicit choice the variant allows: same parameters, same output.
    explicit = ViViT(variant, 1, HIDDEN, 4, 64, num_temporal_layers=1, pooling=_pooling(variant))
    np.testing.assert_array_equal(explicit.apply(variables, tokens, train=False), pooled)
    if _pooling(variant) == "mean":  # Models 3 and 4: the mean of the final tokens
        np.testing.assert_allclose(pooled, np.mean(out, axis=(1, 2)), rtol=1e-5, atol=1e-6)
    else:  # Models 1 and 2: a CLS token, whose output is not the tokens' mean
        assert not np.allclose(pooled, np.mean(out, axis=(1, 2)), atol=1e-3)


@pytest.mark.parametrize(
    "variant,pooling,layout",
    [(v, p, "factorised") for v, p in VARIANT_POOLINGS]
    # One table over all tokens (Models 1, 3, 4 share its code): rows t * ns + s.
    + [("spatio_temporal", "cls", "joint")],
)
def test_padded_frames_change_nothing(variant, pooling, layout):
    frames, mask = _frames()
    model = _encoder(variant, pooling, tokens_per_frame=4, posemb_layout=layout)
    variables = {"params": _params(model, frames, mask, train=False)}
    out = model.apply(variables, frames, mask, train=False)
    assert out.shape == (3, HIDDEN) and bool(jnp.all(jnp.isfinite(out)))

    # Other contents, NaN included, in the padded frames: identical outputs.
    noisy = jnp.where(mask[..., None], frames, jnp.nan)
    np.testing.assert_array_equal(model.apply(variables, noisy, mask, train=False), out)

    # Padded frames still carry their positional embedding; moving it must not matter either,
    # which fails if any valid token (or the pooling) looks at a padded time step.
    params = jax.tree.map(lambda p: p, variables["params"])
    # Frames 2-3 are padded in rows 1 and 2: time rows 2 on, or joint rows 2 * ns on.
    name, first_padded = ("pos_embedding", 8) if layout == "joint" else ("pos_embedding_time", 2)
    pos = params["vivit"][name]
    noise = jax.random.normal(jax.random.key(1), pos[:, first_padded:].shape)
    params["vivit"][name] = pos.at[:, first_padded:].add(noise)
    moved = model.apply({"params": params}, frames, mask, train=False)
    np.testing.assert_allclose(moved[1:], out[1:], atol=1e-5)
    assert not np.allclose(moved[0], out[0], atol=1e-3)  # Row 0 has every frame valid.


@functools.cache
def _jit_apply(block) -> Callable[[dict, jax.Array], jax.Array]:
    """One compilation per block, shared by the parameter variants a test tries."""
    return jax.jit(
        lambda params, x: block.apply(
            {"params": params}, x, jnp.ones(x.shape[:2], bool), train=False
        )
    )


def _influence(block, params: dict, x: jax.Array) -> np.ndarray:
    """Whether out[t, s] changes when only x[t', s'] does, as bool `[t, s, t', s']`."""
    _, nt, ns, d = x.shape
    # One forward pass: the input itself, then one copy per token with that token perturbed.
    # Random directions, since LayerNorm would erase a constant shift.
    delta = np.eye(nt * ns).reshape(nt * ns, nt, ns, 1) * np.random.default_rng(1).normal(size=d)
    xs = jnp.concatenate([x, x + jnp.asarray(delta, x.dtype)])
    out = np.asarray(_jit_apply(block)(params, xs))
    change = np.abs(out[1:] - out[:1]).max(axis=-1)
    return einops.rearrange(change > 1e-5, "(tp sp) t s -> t s tp sp", tp=nt)


def _zero_out(params: dict, path: tuple[str, ...], heads: slice | None = None) -> dict:
    """Copy of params with one attention's output projection zeroed (only `heads` if given)."""
    params = jax.tree.map(lambda p: p, params)
    node = params
    for key in path:
        node = node[key]
    node["kernel"] = node["kernel"].at[heads or slice(None)].set(0)
    if heads is None:
        node["bias"] = jnp.zeros_like(node["bias"])
    return params


def _mixing(influence: np.ndarray) -> tuple[bool, bool, bool]:
    """Whether outputs depend on tokens at (same t, other s), (other t, same s), (other t, s)."""
    nt, ns = influence.shape[:2]
    same_t = np.eye(nt, dtype=bool)[:, None, :, None]
    same_s = np.eye(ns, dtype=bool)[None, :, None, :]
    nonzero = influence
    return (
        bool(np.any(nonzero & same_t & ~same_s)),
        bool(np.any(nonzero & ~same_t & same_s)),
        bool(np.any(nonzero & ~same_t & ~same_s)),
    )


def test_factorised_self_attention_mixes_space_then_time():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 4, 8)), jnp.float32)
    block = FactorisedSelfAttentionBlock(num_heads=2, mlp_dim=16)
    params = _params(block, x, jnp.ones((1, 3), bool), train=False)
    # Spatial step alone: mixes tokens of one time index only.
    spatial_only = _zero_out(params, ("temporal_attention", "out"))
    assert _mixing(_influence(block, spatial_only, x)) == (True, False, False)
    temporal_only = _zero_out(params, ("spatial_attention", "out"))
    assert _mixing(_influence(block, temporal_only, x)) == (False, True, False)
    # Space then time composes: every token reaches every other one.
    assert _mixing(_influence(block, params, x)) == (True, True, True)


def test_factorised_dot_product_splits_heads():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 4, 8)), jnp.float32)
    block = FactorisedDotProductBlock(num_heads=4, mlp_dim=16)
    params = _params(block, x, jnp.ones((1, 3), bool), train=False)
    assert params["attention"]["query"]["kernel"].shape == (8, 4, 2)
    assert params["attention"]["out"]["kernel"].shape == (4, 2, 8)
    out = ("attention", "out")
    # Heads 0-1 are spatial, heads 2-3 temporal.
    assert _mixing(_influence(block, _zero_out(params, out, slice(2, 4)), x)) == (
        True,
        False,
        False,
    )
    assert _mixing(_influence(block, _zero_out(params, out, slice(0, 2)), x)) == (
        False,
        True,
        False,
    )
    # Heads run side by side, not in sequence: nothing reaches across both time and space.
    assert _mixing(_influence(block, params, x)) == (True, True, False)


def test_rejects_cls_without_a_cls_token_and_odd_heads():
    tokens = jnp.ones((1, 2, 2, HIDDEN))
    for variant in ("factorised_self_attention", "factorised_dot_product"):
        with pytest.raises(ValueError, match=r"config\.model\.pooling.*pooling='mean'") as e:
            _params(ViViT(variant, 1, HIDDEN, 4, 64, pooling="cls"), tokens, train=False)
        assert f"variant={variant!r}" in str(e.value) and "config.model.variant" in str(e.value)
    with pytest.raises(ValueError, match="even num_heads"):
        _params(
            ViViT("factorised_dot_product", 1, HIDDEN, 1, 64, pooling="mean"), tokens, train=False
        )
    with pytest.raises(ValueError, match="unknown"):
        _params(ViViT("divided", 1, HIDDEN, 4, 64), tokens, train=False)


def test_sincos_positions_follow_the_formula_and_are_learned():
    emb = np.asarray(sincos_init(None, (1, 5, 1, 6)))[0, :, 0]
    for p in range(5):
        for i in range(3):
            w = 10000.0 ** (-2 * i / 6)
            np.testing.assert_allclose(emb[p, i], np.sin(p * w), atol=1e-6)
            np.testing.assert_allclose(emb[p, 3 + i], np.cos(p * w), atol=1e-6)
    model = ViViT("spatio_temporal", 1, HIDDEN, 4, 64, posemb_init="sincos")
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 7, 1, HIDDEN)), train=False)
    pos = params["params"]["pos_embedding_time"]
    np.testing.assert_allclose(pos, sincos_init(None, (1, 7, 1, HIDDEN)))
    with pytest.raises(ValueError, match="posemb_init"):
        _params(ViViT("spatio_temporal", 1, HIDDEN, 4, 64, posemb_init="rope"), pos, train=False)


def _load_config(arg: str | None = None):
    path = pathlib.Path(__file__).parents[2] / "configs" / "vivit_k400.py"
    spec = importlib.util.spec_from_file_location("vivit_k400", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@functools.cache
def _k400_shapes(variant: str) -> tuple[jax.ShapeDtypeStruct, dict]:
    """(logits, variables) shapes of configs/vivit_k400.py with only `variant` changed."""
    config = _load_config()
    assert config.model.name == "vivit_pixels" and config.data.format == "video_files"
    config.model.variant = variant  # pooling and positions follow it ('auto')
    # Every hyper-parameter comes from the config, as the trainer builds it.
    model = build_model(config.model, config.data.num_classes)
    d = config.data
    pixels = jax.ShapeDtypeStruct((1, d.num_frames, d.image_size, d.image_size, 3), jnp.uint8)
    # Shapes only: nothing of ViViT-B's ~100M parameters is materialised.
    return jax.eval_shape(
        lambda v: model.init_with_output(jax.random.key(0), {"pixels": v}, train=False), pixels
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_k400_config_builds_every_variant(variant):
    out, variables = _k400_shapes(variant)
    assert out.shape == (1, 400)
    nt, ns = 32 // 2, (224 // 16) ** 2
    vivit = variables["params"]["vivit"]["vivit"]
    if variant == "factorised_encoder":  # one table per encoder: space per frame, then time
        assert vivit["pos_embedding_time"].shape == (1, nt, 1, 768)
        assert vivit["pos_embedding_space"].shape == (1, 1, ns, 768)
        assert {"cls_space", "cls_time"} <= set(vivit)
    else:  # one table over all nt * ns tokens, as the paper (Sec. 3.4) and Scenic
        assert vivit["pos_embedding"].shape == (1, nt * ns, 768)
        assert ("cls" in vivit) == (variant == "spatio_temporal")


# ViViT paper (Arnab et al. 2021, arXiv:2103.15691) Table 2: parameters of the ViViT-B models
# on Kinetics-400 (tubelets 2x16x16, 32 frames of 224x224).
PAPER_PARAMS = {
    "spatio_temporal": 88.9e6,  # Model 1
    "factorised_encoder": 115.1e6,  # Model 2
    "factorised_self_attention": 117.3e6,  # Model 3
    "factorised_dot_product": 88.9e6,  # Model 4
}


def _hand_count(variant: str) -> int:
    """ViViT-B's parameters written out from the paper's architecture (Sec. 3.2-3.4)."""
    d, mlp, layers, classes, nt, ns = 768, 3072, 12, 400, 16, 196
    layer_norm = 2 * d
    attention = 4 * (d * d + d)  # query, key, value, output: kernel and bias each
    block = 2 * layer_norm + attention + (d * mlp + mlp) + (mlp * d + d)
    embedding = 2 * 16 * 16 * 3 * d + d  # the tubelet projection
    head = d * classes + classes
    if variant == "factorised_encoder":
        spatial = ns * d + d + layers * block + layer_norm  # positions, CLS, blocks, final LN
        temporal = nt * d + d + 4 * block + layer_norm
        return embedding + spatial + temporal + head
    per_block = {  # Model 3 adds a temporal attention with its own LayerNorm to each block
        "spatio_temporal": block,
        "factorised_self_attention": block + layer_norm + attention,
        "factorised_dot_product": block,  # the heads split, the weights stay the same
    }[variant]
    cls = d if variant == "spatio_temporal" else 0
    return embedding + nt * ns * d + cls + layers * per_block + layer_norm + head


@pytest.mark.parametrize("variant", VARIANTS)
def test_k400_parameter_counts_match_the_paper(variant):
    _, variables = _k400_shapes(variant)
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables))
    assert count == _hand_count(variant)
    assert count == pytest.approx(PAPER_PARAMS[variant], rel=0.015)


def test_k400_config_presets():
    assert _load_config("fe").model.variant == "factorised_encoder"
    with pytest.raises(ValueError, match="unknown preset"):
        _load_config("huge")
